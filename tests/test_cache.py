"""Encode once: the codec output cache, and jobs extended without encoding again."""

from pathlib import Path

import numpy as np
import polars as pl
import pytest
from helpers import photo
from PIL import Image

from mpq.cache import EncodedCache
from mpq.codecs.image import PillowCodec
from mpq.components import Coded
from mpq.media import Image as RGB
from mpq.reading import read_results
from mpq.runner import run_job
from mpq.spec import parse_job


@pytest.fixture
def photos(tmp_path) -> Path:
    root = tmp_path / "photos" / "things"
    root.mkdir(parents=True)
    for i in range(3):
        Image.fromarray(photo(seed=i)).save(root / f"p{i}.png")
    return root.parent


def job(folder, tasks=("classify",), **extra):
    return parse_job({
        "name": "cached",
        "datasets": [{"name": "photos", "source": {"folder": str(folder), "labels": "parent"}}],
        "codecs": [{"name": "jpeg", "settings": [10, 50]}, {"name": "webp", "settings": [20]}],
        "tasks": [{"name": "classify", "id": t, "model": "builtin:tiny-vit"} for t in tasks],
        "metrics": ["psnr"],
        **extra,
    })


@pytest.fixture
def roundtrips(monkeypatch) -> list:
    """Every real JPEG/WebP round trip run in this process (the serial engine's)."""
    calls = []
    real = PillowCodec.roundtrip

    def spy(self, media, setting):
        calls.append((self.name, setting))
        return real(self, media, setting)

    monkeypatch.setattr(PillowCodec, "roundtrip", spy)
    return calls


def test_entries_round_trip_exactly_and_damaged_ones_are_misses(tmp_path):
    cache = EncodedCache(f"file://{tmp_path}/out")  # a URI goes through pyarrow's filesystems like s3:// would
    path = cache.path("d", "cats/a.png", "jpeg", 10, "pillow 11 libjpeg 8", {}, "0")
    assert cache.get(path) is None
    image = photo()
    cache.put(path, Coded(bits=1234, decoded=RGB(image), extra={"bits_side": 56}))
    hit = cache.get(path)
    assert hit.bits == 1234 and hit.extra == {"bits_side": 56}
    assert hit.decoded.pixels.dtype == np.uint8 and np.array_equal(hit.decoded.pixels, image)
    other = cache.path("d", "cats/a.png", "jpeg", 10, "pillow 12 libjpeg 8", {}, "0")  # a new codec version: a new entry
    assert other != path and cache.get(other) is None
    cache.put(other, Coded(bits=8, decoded=RGB(image[:10])))
    assert np.array_equal(cache.get(other).decoded.pixels, image[:10])
    assert not list(Path(tmp_path).rglob("*.tmp-*"))  # written under a temporary name, then renamed

    Path(path.removeprefix("file://")).write_bytes(b"half an entry")  # damaged (not by mpq: mpq renames whole files)
    assert cache.get(path) is None
    cache.put(path, Coded(bits=1234, decoded=RGB(image)))
    assert np.array_equal(cache.get(path).decoded.pixels, image)


def test_adding_a_task_decodes_from_the_cache_instead_of_encoding_again(photos, tmp_path, roundtrips):
    out = str(tmp_path / "out")
    run_job(job(photos), out, engine="serial", progress=False)
    assert len(roundtrips) == 3 * 3  # 3 photos × 3 settings
    first = read_results(out)

    more = run_job(job(photos, tasks=("classify", "again")), out, engine="serial", progress=False)
    assert more.written == 3 * 4 and len(roundtrips) == 9  # the new task's rows, and not one round trip more
    assert 0 < more.startup_seconds <= more.seconds
    df = read_results(out)
    key = ["sample_id", "codec", "setting"]
    assert df.filter(pl.col("task") == "classify").drop("run_id").sort(key).equals(first.drop("run_id").sort(key))
    # The cached decodes are the very images the codec produced: same bits, same PSNR, same answers.
    cols = [*key, "bits", "bpp", "psnr", "codec_version", "prediction"]
    fresh = df.filter(pl.col("task") == "classify").select(cols).sort(key)
    cached = df.filter(pl.col("task") == "again").select(cols).sort(key)
    assert cached.equals(fresh) and cached["psnr"].is_not_null().sum() == 9


def test_adding_a_metric_recomputes_rows_from_the_cache_and_supersedes_them(photos, tmp_path, roundtrips):
    out = str(tmp_path / "out")
    run_job(job(photos), out, engine="serial", progress=False)
    first = read_results(out)
    assert "ssim" not in first.columns and len(roundtrips) == 9

    more = run_job(job(photos, metrics=["psnr", "ssim"]), out, engine="serial", progress=False)
    assert more.already_done == 0 and more.written == 3 * 4 and len(roundtrips) == 9  # redone, not re-encoded
    df = read_results(out)
    assert df.height == 12 and df.select("sample_id", "codec", "setting").n_unique() == 12  # superseded, not doubled
    coded = df.filter(pl.col("codec") != "none")
    assert coded["ssim"].is_not_null().all() and coded["ssim"].is_between(0, 1).all()
    assert df["run_id"].n_unique() == 1 and df["run_id"][0] != first["run_id"][0]
    key = ["sample_id", "codec", "setting"]
    assert df.select(*key, "bits", "psnr", "prediction").sort(key).equals(first.select(*key, "bits", "psnr", "prediction").sort(key))

    again = run_job(job(photos, metrics=["psnr", "ssim"]), out, engine="serial", progress=False)
    assert again.written == 0 and again.already_done == 12  # and now it is done
    dropped = run_job(job(photos), out, engine="serial", progress=False)
    assert dropped.written == 0  # a metric taken out of the job leaves the rows as they are


def test_cache_off_encodes_every_time_and_stores_nothing(photos, tmp_path, roundtrips):
    out = tmp_path / "out"
    run_job(job(photos, cache=False), str(out), engine="serial", progress=False)
    run_job(job(photos, tasks=("classify", "again"), cache=False), str(out), engine="serial", progress=False)
    assert len(roundtrips) == 9 + 9 and not (out / "cache").exists()


AUDIO_CODECS = [("mp3", {}, 32), ("opus", {}, 12), ("encodec_48khz", {"model": "builtin:tiny-encodec-48khz"}, 6)]


@pytest.mark.parametrize("name, options, setting", AUDIO_CODECS)
def test_real_audio_round_trips_the_cache_exactly(tmp_path, name, options, setting):
    from test_audio import tone

    from mpq import registry
    from mpq.media import Audio, audio_from_array

    codec_cls = registry.get("codec", name)
    codec = codec_cls(codec_cls.Options(**options))
    coded = codec.roundtrip(audio_from_array(tone(0.5, 44100, channels=2), 44100), setting)
    assert isinstance(coded.decoded, Audio)
    cache = EncodedCache(str(tmp_path / "out"))
    path = cache.path("music", "t0", name, setting, codec.version(), codec.options.model_dump(mode="json"), "0")
    cache.put(path, coded)
    hit = cache.get(path)
    assert isinstance(hit.decoded, Audio) and hit.bits == coded.bits and hit.extra == coded.extra
    assert hit.decoded.sample_rate == 44100 and hit.decoded.channels == 2
    assert hit.decoded.samples.dtype == np.float32 and np.array_equal(hit.decoded.samples, coded.decoded.samples)
    assert hit.decoded.conversion == coded.decoded.conversion


@pytest.mark.parametrize("name, setting", [("jpeg", 10), ("jpegxl", 4)])
def test_real_images_round_trip_the_cache_exactly(tmp_path, name, setting):
    from mpq import registry

    codec = registry.get("codec", name)()
    coded = codec.roundtrip(RGB(photo(40, 56)), setting)
    coded.decoded.conversion, coded.decoded.orientation = "L → RGB", 6  # fields the Arrow form keeps too
    cache = EncodedCache(str(tmp_path / "out"))
    path = cache.path("photos", "p0", name, setting, codec.version(), codec.options.model_dump(mode="json"), "0")
    cache.put(path, coded)
    hit = cache.get(path)
    assert isinstance(hit.decoded, RGB) and (hit.bits, hit.extra, hit.device) == (coded.bits, coded.extra, coded.device)
    assert np.array_equal(hit.decoded.pixels, coded.decoded.pixels) and hit.decoded.pixels.dtype == np.uint8
    assert (hit.decoded.conversion, hit.decoded.orientation) == ("L → RGB", 6)


def test_an_entry_of_another_kind_or_format_is_a_miss_not_an_error(tmp_path):
    """An entry written by an older mpq (an object pointer where audio should be) is encoded afresh."""
    import pyarrow as pa

    cache = EncodedCache(str(tmp_path / "out"))
    path = cache.path("music", "t0", "mp3", 32, "v", {}, "0")
    old = pa.table({"bits": [8], "extra": ["{}"], "dtype": ["|O"], "shape": [[]], "data": [b"\x00" * 8]})
    Path(path).parent.mkdir(parents=True)
    with pa.OSFile(path, "wb") as f, pa.ipc.new_file(f, old.schema) as w:
        w.write_table(old)
    assert cache.get(path) is None


def music_job(**extra):
    return parse_job({
        "name": "music",
        "datasets": [{"name": "music", "source": {"music": "synthetic", "tracks": 2, "seconds": 1}}],
        "codecs": [{"name": "mp3", "settings": [32]}, {"name": "opus", "settings": [12]}],
        "metrics": ["audio_psnr"],
        **extra,
    })


def test_audio_rerun_from_the_cache_gives_no_error_rows(tmp_path):
    """Measured on the smoke job: results deleted, run again: every audio row became a `codec:` error row."""
    import shutil

    out = tmp_path / "out"
    first = run_job(music_job(), str(out), engine="serial", progress=False)
    assert first.written == 2 * 3 and first.errors == 0
    shutil.rmtree(out / "results")
    again = run_job(music_job(), str(out), engine="serial", progress=False)
    assert again.written == 2 * 3 and again.errors == 0
    df = read_results(str(out))
    assert df["error"].null_count() == df.height
    assert df.filter(pl.col("codec") != "none")["psnr"].is_finite().all()


def test_rows_lost_to_the_old_cache_bug_are_redone(tmp_path):
    """Error rows that the cache (not the sample) caused are not done: a re-run redoes them."""
    out = tmp_path / "out"
    run_job(music_job(), str(out), engine="serial", progress=False)
    files = list((out / "results").glob("*.parquet"))
    df = pl.read_parquet(files[0])
    broken = df.with_columns(
        pl.when(pl.col("codec") == "mp3").then(pl.lit("codec: ValueError: cannot create an OBJECT array from memory buffer"))
        .otherwise(pl.col("error")).alias("error")
    )
    for f in files:
        f.unlink()
    broken.write_parquet(out / "results" / "part-0-000001.parquet")
    again = run_job(music_job(), str(out), engine="serial", progress=False)
    assert again.written == 2 and again.errors == 0  # the two mp3 rows, redone
    assert read_results(str(out))["error"].null_count() == 6


@pytest.mark.slow
def test_rows_of_mpq_0_2_with_agreement_on_other_scales_are_redone(tmp_path):
    """mpq 0.2.0 wrote separation's agreement in dB (0.31 to 26.4 and +inf on the default job)
    and ASR's unbounded below: its rows are not done, and a re-run writes agreement in [0, 1]
    with the SDR in a column of its own."""
    spec = {"datasets": [{"name": "music", "source": {"music": "synthetic", "tracks": 1, "seconds": 1}}],
            "tasks": [{"name": "separate", "model": "builtin:tiny-htdemucs"}]}
    out = tmp_path / "out"
    run_job(music_job(**spec), str(out), engine="serial", progress=False)
    files = list((out / "results").glob("*.parquet"))
    old = pl.read_parquet(files[0]).with_columns(
        pl.lit("0.2.0").alias("mpq_version"),
        pl.when(pl.col("codec") != "none").then(pl.col("sdr_vs_clean")).alias("agreement"),  # 0.2.0's dB
    ).drop("sdr_vs_clean")
    for f in files:
        f.unlink()
    old.write_parquet(out / "results" / "part-0-000001.parquet")
    again = run_job(music_job(**spec), str(out), engine="serial", progress=False)
    assert again.written == 3 and again.already_done == 0
    df = read_results(str(out))
    assert df.height == 3 and (df["mpq_version"] != "0.2.0").all()
    coded = df.filter(pl.col("codec") != "none")
    sdr, agreement = coded["sdr_vs_clean"].to_numpy(), coded["agreement"].to_numpy()
    assert ((agreement >= 0) & (agreement <= 1)).all()
    np.testing.assert_allclose(agreement, 1 / (1 + 10 ** (-sdr / 10)))


def test_machine_failures_are_retryable_and_sample_failures_are_done():
    from mpq.engine.stages import _error
    from mpq.results import retryable

    assert retryable(_error("task", MemoryError("no room"))) and _error("task", MemoryError()).startswith("infra: task:")
    assert not retryable(_error("codec", ValueError("bad setting"))) and not retryable(None)


def test_an_entry_of_another_original_is_a_miss(tmp_path):
    """Measured: the same dataset name and sample id over another folder was served the first
    folder's decode (PSNR 28.29 where the image's own is 30.51): the key names the original."""
    import shutil

    def run(folder, out):
        job = parse_job({
            "name": "c", "datasets": [{"name": "photos", "source": {"folder": str(folder)}}],
            "codecs": [{"name": "jpeg", "settings": [30]}], "metrics": ["psnr"],
        })
        run_job(job, str(out), engine="serial", progress=False)
        return read_results(str(out)).filter(pl.col("codec") == "jpeg")["psnr"][0]

    for name, seed in (("a", 1), ("b", 2)):
        (tmp_path / name / "x").mkdir(parents=True)
        Image.fromarray(photo(64, 64, seed=seed) // (1 + seed)).save(tmp_path / name / "x" / "p.png")
    out = tmp_path / "out"
    run(tmp_path / "a", out)
    shutil.rmtree(out / "results")
    from_b = run(tmp_path / "b", out)
    assert from_b == run(tmp_path / "b", tmp_path / "fresh")


def test_rows_written_by_an_mpq_with_wrong_definitions_are_redone(tmp_path):
    """mpq 0.1.0 wrote `bps` per time step, shifted ADE20k labels and rounded DAC over both
    channels: its rows are not done, and a re-run supersedes them."""
    out = tmp_path / "out"
    run_job(music_job(), str(out), engine="serial", progress=False)
    files = list((out / "results").glob("*.parquet"))
    old = pl.read_parquet(files[0]).with_columns(pl.lit("0.1.0").alias("mpq_version"), (pl.col("bps") * 2).alias("bps"))
    for f in files:
        f.unlink()
    old.write_parquet(out / "results" / "part-0-000001.parquet")
    again = run_job(music_job(), str(out), engine="serial", progress=False)
    assert again.written == 6 and again.already_done == 0
    df = read_results(str(out))
    assert df.height == 6 and (df["mpq_version"] != "0.1.0").all()
