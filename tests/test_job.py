"""The resolved job: components looked up once, read by the whole run; rows record their modality."""

import pickle

import polars as pl
import pytest
from helpers import ROOT

from mpq import registry
from mpq.analysis.tables import modalities
from mpq.job import resolve
from mpq.reading import read_results
from mpq.runner import run_job
from mpq.spec import load_job, parse_job
from mpq.targets import Target


def test_resolved_job_holds_each_datasets_components_and_pickles_as_its_spec():
    spec = load_job(ROOT / "jobs" / "smoke.yaml")
    job = resolve(spec)
    photos, text, speech, music = (job.datasets[n] for n in ("photos", "text", "speech", "music"))
    assert [d.modality.name for d in (photos, text, speech, music)] == ["image", "image", "audio", "audio"]
    for images in (photos, text):
        assert [(c.name, c.settings) for c in images.codecs] == [
            ("jpeg", (5, 10, 20, 50, 90, Target("bpp", 0.7))), ("webp", (0, 20, 50, 90, Target("bpp", 0.7))),
        ]
    assert [c.name for c in speech.codecs] == ["mp3", "opus", "encodec_48khz"]
    assert [[t.task_id for t in d.tasks] for d in (photos, text, speech, music)] == [["classify"], ["ocr"], ["asr"], ["separate"]]
    assert [m.name for m in photos.metrics] == ["psnr", "lpips"] and photos.metric_columns == {"psnr", "lpips"}
    assert job.codecs["encodec_48khz"].options.model == "builtin:tiny-encodec-48khz"
    assert {"modality", "psnr", "cdpam", "target_bpp"} <= set(job.schema.names)
    # Ray ships it as its spec: small, and one Job per process however often it arrives.
    blob = pickle.dumps(job)
    assert len(blob) < 4000 and pickle.loads(blob) is job and resolve(load_job(ROOT / "jobs" / "smoke.yaml")) is job


def test_a_run_reads_the_resolved_job_not_the_registry_and_rows_record_their_modality(tmp_path, monkeypatch):
    spec = parse_job({
        "name": "two",
        "datasets": [
            {"name": "photo", "source": {"samples": "photos"}, "limit": 1},
            {"name": "tone", "source": {"music": "synthetic", "tracks": 1, "seconds": 1}},
        ],
        "codecs": [{"name": "jpeg", "settings": [10]}, {"name": "mp3", "settings": [32]}],
        "metrics": ["psnr", "audio_psnr"],
    })
    resolve(spec)

    def no_lookup(kind, name):
        raise AssertionError(f"registry.get({kind!r}, {name!r}) after the job was resolved")

    monkeypatch.setattr(registry, "get", no_lookup)
    run_job(spec, str(tmp_path / "out"), engine="serial", progress=False)
    monkeypatch.undo()
    df = read_results(str(tmp_path / "out"))
    assert df.height == 4 and df["error"].null_count() == 4
    assert dict(df.select("dataset", "modality").unique().iter_rows()) == {"photo": "image", "tone": "audio"}

    # The analysis takes the modality from the rows, whatever the codec's name (a plugin not
    # installed here), and guesses from the codec only for rows of an mpq that did not record it.
    renamed = df.with_columns(pl.lit("elsewhere").alias("codec"))
    assert modalities(renamed) == {"photo": "image", "tone": "audio"}
    assert modalities(renamed.drop("modality")) == {"photo": "other", "tone": "other"}
    assert modalities(df.drop("modality")) == {"photo": "image", "tone": "audio"}


def test_resolving_refuses_a_component_declaring_a_base_column_with_another_type(monkeypatch):
    import pyarrow as pa

    from mpq.job import _resolve_json

    spec = parse_job({"name": "clash", "datasets": [{"name": "p", "source": {"samples": "photos"}}],
                      "codecs": [{"name": "jpeg", "settings": [10]}]})
    monkeypatch.setattr(registry.get("codec", "jpeg"), "columns", {"bpp": pa.string()})
    _resolve_json.cache_clear()
    try:
        with pytest.raises(TypeError, match="codec 'jpeg' declares column 'bpp' as string, already double"):
            resolve(spec)
    finally:
        _resolve_json.cache_clear()
