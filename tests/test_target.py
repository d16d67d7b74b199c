"""Equal-rate settings (issue 15.1): a codec entry asks for target rates; per sample the
codec's quality knob is bisected for the highest setting whose real bitstream fits."""

import math

import polars as pl
import pytest
from helpers import photo
from PIL import Image

from mpq import analysis, registry
from mpq.cache import EncodedCache
from mpq.media import Image as RGB
from mpq.reading import read_results
from mpq.runner import run_job
from mpq.spec import JobSpecError, parse_job
from mpq.targets import knob, search

H, W = 48, 64


def jpeg():
    cls = registry.get("codec", "jpeg")
    return cls(cls.Options())


def bpp(coded):
    return coded.bits / (H * W)


@pytest.mark.parametrize("target", [1.9, 2.4, 3.5])
def test_search_finds_the_highest_jpeg_quality_that_fits_by_bisection(target):
    codec, img = jpeg(), RGB(photo(H, W, seed=1))
    calls = []

    def roundtrip(q):
        calls.append(q)
        return codec.roundtrip(img, q)

    quality, coded, rate = search(roundtrip, bpp, knob(type(codec)), target, "jpeg")
    assert rate == bpp(coded) <= target
    assert bpp(codec.roundtrip(img, quality)) == rate  # the real bitstream at that quality
    assert bpp(codec.roundtrip(img, quality + 1)) > target  # the next quality up does not fit
    assert len(calls) <= 2 + math.ceil(math.log2(len(knob(type(codec)))))  # bisection, not a scan


@pytest.mark.parametrize("name, target", [("opus", 20.0), ("mp3", 50.0)])
def test_search_on_an_audio_codecs_requested_kbps(name, target):
    from test_audio import tone

    from mpq.media import audio_from_array

    audio = audio_from_array(tone(1.0, 44100, 1), 44100)
    codec = registry.get("codec", name)()

    def kbps(coded):
        return coded.bits / audio.duration / 1000

    setting, coded, rate = search(lambda k: codec.roundtrip(audio, k), kbps, knob(type(codec)), target, name)
    assert rate == kbps(codec.roundtrip(audio, setting)) <= target
    assert kbps(codec.roundtrip(audio, setting + 1)) > target


def test_search_says_when_a_target_is_out_of_reach():
    codec, img = jpeg(), RGB(photo(H, W))
    with pytest.raises(ValueError, match="out of reach: jpeg's lowest setting 1 gives"):
        search(lambda q: codec.roundtrip(img, q), bpp, knob(type(codec)), 0.01, "jpeg")


def job(codecs, root):
    return {"name": "target", "datasets": [{"name": "synthetic", "source": {"folder": str(root / "imgs"), "labels": "parent"}}],
            "codecs": codecs, "tasks": [{"name": "classify", "model": "builtin:tiny-vit", "batch_size": 4}]}


@pytest.mark.parametrize("codec, why", [
    ({"name": "jpegxl", "target_bpp": [0.5]}, "codecs[0].target_bpp: jpegxl has no monotone quality knob to search for a target rate"),
    ({"name": "mp3", "target_bpp": [0.5]}, "codecs[0].target_bpp: mp3 codes audio: target_bpp is for image codecs"),
    ({"name": "jpeg", "target_kbps": [64]}, "codecs[0].target_kbps: jpeg codes image: target_kbps is for audio codecs"),
    ({"name": "jpeg", "target_bpp": [0, 0.5]}, "codecs[0].target_bpp: must be a non-empty list of positive numbers"),
])
def test_codecs_refuse_targets_they_cannot_search_with_a_clear_message(codec, why, tmp_path):
    with pytest.raises(JobSpecError) as err:
        parse_job(job([codec], tmp_path))
    assert why in str(err.value)


def test_an_entry_may_hold_settings_and_targets(tmp_path):
    spec = parse_job(job([{"name": "jpeg", "settings": [5, 20], "target_bpp": [0.2]}, {"name": "webp", "target_bpp": [0.2]}], tmp_path))
    assert [str(s) for s in spec.settings(spec.codecs[0])] == ["5", "20", "bpp<=0.2"]
    assert [str(s) for s in spec.settings(spec.codecs[1])] == ["bpp<=0.2"]  # targets only: not the default sweep too
    with pytest.raises(JobSpecError, match=r"codecs\[0\].settings\[0\]: 200"):
        parse_job(job([{"name": "jpeg", "settings": [200], "target_bpp": [0.2]}], tmp_path))


@pytest.mark.slow
def test_a_job_at_target_rates_records_setting_and_rate_and_caches_each_step(tmp_path):
    for i in range(3):
        (tmp_path / "imgs" / "astronaut").mkdir(parents=True, exist_ok=True)
        Image.fromarray(photo(H, W, seed=i)).save(tmp_path / "imgs" / "astronaut" / f"{i}.png")
    spec = parse_job(job([{"name": "jpeg", "target_bpp": [2.0, 2.5]}, {"name": "webp", "target_bpp": [2.0, 2.5]}], tmp_path))
    out = tmp_path / "out"
    run_job(spec, str(out), engine="serial", progress=False)
    rows = read_results(str(out)).filter(pl.col("codec") != "none")
    assert rows.height == 12 and rows["error"].null_count() == 12
    assert sorted(rows["setting"].unique()) == ["bpp<=2", "bpp<=2.5"]
    cache = EncodedCache(str(out))
    for r in rows.iter_rows(named=True):
        codec = registry.get("codec", r["codec"])
        codec = codec(codec.Options())
        img = RGB(photo(H, W, seed=int(r["sample_id"].split("/")[-1].split(".")[0])))
        q = int(r["target_setting"])
        assert r["bpp"] <= r["target_bpp"] and r["setting"] == f"bpp<={r['target_bpp']:g}"
        assert r["bpp"] == pytest.approx(codec.roundtrip(img, q).bits / (H * W))
        assert codec.roundtrip(img, q + 1).bits / (H * W) > r["target_bpp"]
        # The step that overshot was cached like any round trip.
        key = (r["codec"], q + 1, codec.version(), codec.options.model_dump(mode="json"), img.digest())
        assert cache.get(cache.path("synthetic", r["sample_id"], *key))
    # The analysis takes the rows' own targets as the equal-rate conditions.
    table = analysis.equal_rate(read_results(str(out)), n_resamples=20, include_flagged=True)  # its tiny classifier is random
    assert sorted(set(table.select("target", "codec").rows())) == [(2.0, "jpeg"), (2.0, "webp"), (2.5, "jpeg"), (2.5, "webp")]
    for r in table.iter_rows(named=True):  # the qualities the search chose, e.g. "12, 30, 41"
        chosen = rows.filter((pl.col("codec") == r["codec"]) & (pl.col("target_bpp") == r["target"]))["target_setting"]
        assert r["setting"] == ", ".join(sorted(chosen.unique(), key=int))
