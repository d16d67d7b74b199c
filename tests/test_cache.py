"""Encode once: the codec output cache, and jobs extended without encoding again."""

from pathlib import Path

import numpy as np
import polars as pl
import pytest
from conftest import photo
from PIL import Image

from mpq.cache import EncodedCache
from mpq.codecs.image import PillowCodec
from mpq.components import Coded
from mpq.runner import run_job
from mpq.spec import parse_job
from mpq.summary import read_results


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
    path = cache.path("d", "cats/a.png", "jpeg", 10, "pillow 11 libjpeg 8", {})
    assert cache.get(path) is None
    image = photo()
    cache.put(path, Coded(bits=1234, decoded=image, extra={"bits_side": 56}))
    hit = cache.get(path)
    assert hit.bits == 1234 and hit.extra == {"bits_side": 56}
    assert hit.decoded.dtype == np.uint8 and np.array_equal(hit.decoded, image)
    wave = np.linspace(-1, 1, 999, dtype=np.float32)  # any array: audio too
    other = cache.path("d", "cats/a.png", "jpeg", 10, "pillow 12 libjpeg 8", {})  # a new codec version: a new entry
    assert other != path and cache.get(other) is None
    cache.put(other, Coded(bits=8, decoded=wave))
    assert np.array_equal(cache.get(other).decoded, wave) and cache.get(other).decoded.dtype == np.float32
    assert not list(Path(tmp_path).rglob("*.tmp-*"))  # written under a temporary name, then renamed

    Path(path.removeprefix("file://")).write_bytes(b"half an entry")  # damaged (not by mpq: mpq renames whole files)
    assert cache.get(path) is None
    cache.put(path, Coded(bits=1234, decoded=image))
    assert np.array_equal(cache.get(path).decoded, image)


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
