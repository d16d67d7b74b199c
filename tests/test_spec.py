import pytest

from mpq import registry
from mpq.spec import JobSpecError, load_job, parse_job

GOOD = {
    "name": "t",
    "datasets": [{"name": "d", "source": {"samples": "skimage", "names": ["astronaut"]}}],
    "codecs": [{"name": "jpeg", "settings": [5, 10]}],
    "tasks": [{"name": "classify", "model": "builtin:tiny-vit"}],
    "metrics": ["psnr"],
}


def with_(**changes):
    job = {**GOOD, **changes}
    return job


def problems(data) -> str:
    with pytest.raises(JobSpecError) as exc:
        parse_job(data, "job.yaml")
    return str(exc.value)


def test_good_job_parses_to_typed_spec():
    job = parse_job(GOOD)
    assert job.codecs[0].settings == [5, 10]
    assert job.tasks[0].task_id == "classify"
    assert job.resources.model_actors is None  # auto: as many as the cluster holds


def test_unknown_codec_names_key_value_and_choices():
    msg = problems(with_(codecs=[{"name": "jpg", "settings": [5]}]))
    assert "codecs[0].name" in msg and "'jpg'" in msg
    for name in registry.names("codec"):
        assert name in msg


def test_unknown_top_level_key_and_option_are_refused():
    assert "colour: unknown key" in problems(with_(colour="blue"))
    msg = problems(with_(codecs=[{"name": "jpeg", "settings": [5], "qualty": 3}]))
    assert "codecs[0].qualty: unknown key" in msg


def test_bad_setting_names_valid_range():
    msg = problems(with_(codecs=[{"name": "jpeg", "settings": [5, 300]}, {"name": "mbt2018", "settings": [9]}]))
    assert "codecs[0].settings[1]: 300" in msg and "[1, 95]" in msg
    assert "codecs[1].settings[0]: 9" in msg and "[1, 8]" in msg


def test_every_problem_is_reported_at_once():
    msg = problems(with_(tasks=[{"name": "clasify"}], metrics=["psnr", "ssim-typo"]))
    assert "tasks[0].name: unknown task 'clasify'" in msg
    assert "metrics[1].name: unknown metric 'ssim-typo'" in msg


def test_source_needs_exactly_one_known_kind():
    msg = problems(with_(datasets=[{"name": "d", "source": {"hugging": "beans"}}]))
    assert "datasets[0].source" in msg and "hf" in msg and "folder" in msg


def test_task_dataset_reference_and_duplicate_ids():
    msg = problems(with_(tasks=[{"name": "classify", "datasets": ["nope"]}, {"name": "classify"}]))
    assert "unknown dataset 'nope'" in msg
    assert "id 'classify' is used twice" in msg


def test_bad_resources():
    msg = problems(with_(resources={"model_actors": [3, 1], "codec_cpus": 0}))
    assert "resources.model_actors" in msg and "resources.codec_cpus" in msg


def test_shipped_job_files_are_valid():
    from helpers import ROOT

    for path in sorted((ROOT / "jobs").glob("*.yaml")):
        load_job(path)


def test_unreadable_and_non_yaml_files(tmp_path):
    with pytest.raises(JobSpecError, match="cannot read"):
        load_job(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed")
    with pytest.raises(JobSpecError, match="not valid YAML"):
        load_job(bad)


def test_unknown_builtin_model_is_refused_before_any_work():
    msg = problems(with_(tasks=[{"name": "classify", "model": "builtin:tiny-vitt"}]))
    assert "tasks[0].model" in msg and "builtin:tiny-vitt" in msg and "builtin:tiny-vit," in msg
    assert "Value error" not in msg


def test_unknown_key_lists_every_valid_key_the_entry_takes():
    msg = problems(with_(tasks=[{"name": "classify", "model": "builtin:tiny-vit", "batch_sise": 4}]))
    line = next(line for line in msg.splitlines() if "tasks[0].batch_sise" in line)
    assert line.endswith(" tasks[0].batch_sise: unknown key; valid keys: name, id, batch_size, datasets, model, revision")
    msg = problems(with_(codecs=[{"name": "jpeg", "setings": [5]}]))
    assert "codecs[0].setings: unknown key; valid keys: name, settings" in msg
    assert "metrics[0].bakbone: unknown key; valid keys: name, " in problems(with_(metrics=[{"name": "lpips", "bakbone": "x"}]))
