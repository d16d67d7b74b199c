"""What a process imports pays at every start: the driver, each Ray read task that plans
shards and each codec task loading and coding samples must not import the model libraries
(torch alone is seconds a process), and a model loads with only the library it runs on.
Each check runs in a fresh interpreter and reads its ``sys.modules``."""

import json
import subprocess
import sys

import pytest
from helpers import ROOT

MODEL_LIBRARIES = ("torch", "transformers", "timm", "torchvision")


def imported_by(code: str) -> set[str]:
    probe = f"\nimport sys, json\nprint(json.dumps([m for m in {MODEL_LIBRARIES!r} if m in sys.modules]))"
    proc = subprocess.run([sys.executable, "-c", code + probe], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return set(json.loads(proc.stdout.strip().splitlines()[-1]))


def test_planning_and_cpu_coding_import_no_model_library():
    """The smoke job's photos, pages and speech through its CPU codecs, as a read task and a codec task
    run them: preflight, plan, load, encode."""
    code = """
import yaml
import mpq.engine.ray  # the driver's engine module, which read and codec tasks unpickle
from mpq.engine.plan import Planner, iter_items, shards
from mpq.engine.stages import Encode, Load
from mpq.runner import preflight, required_metric_columns
from mpq.job import resolve
from mpq.spec import parse_job

data = yaml.safe_load(open("jobs/smoke.yaml"))
data["datasets"] = [{**d, "limit": 2} for d in data["datasets"] if d["name"] in ("photos", "text", "speech")]
data["codecs"] = [c for c in data["codecs"] if c["name"] in ("jpeg", "webp", "mp3", "opus")]
data["tasks"] = [t for t in data["tasks"] if t["name"] != "separate"]
job = resolve(parse_job(data))
preflight(job)
items = list(iter_items(Planner(job, "", required_metric_columns(job), []), shards(job)))
rows = Encode(job)(Load(job)(items))
assert len(rows) > 4 and all(r["error"] is None for r in rows), [r["error"] for r in rows]
"""
    assert imported_by(code) == set()


@pytest.mark.slow
def test_timm_classifier_and_faster_whisper_load_without_transformers():
    """The smoke job's classifier (timm) and speech recogniser (faster-whisper) each load with
    their own library; transformers (seconds to import) is for transformers models only."""
    code = """
from mpq.tasks.asr import ASR, ASROptions
from mpq.tasks.classify import Classify, ClassifyOptions

Classify(ClassifyOptions(model="builtin:efficientnet-lite0")).load()
ASR(ASROptions(model="builtin:whisper-tiny.en")).load()
"""
    assert "transformers" not in imported_by(code)


def test_a_task_model_loads_at_its_first_use_only():
    """Each actor runs every task's stage; one whose samples never need a task (photos, in a job
    with a speech recogniser) must not pay for loading its model."""
    import yaml

    from mpq.engine.plan import Planner, iter_items, shards
    from mpq.engine.stages import Encode, Load, Predict
    from mpq.job import resolve
    from mpq.spec import parse_job

    data = yaml.safe_load(open(ROOT / "jobs/smoke.yaml"))
    data["datasets"] = [{**d, "limit": 1} for d in data["datasets"] if d["name"] in ("photos", "speech")]
    data["codecs"] = [c for c in data["codecs"] if c["name"] in ("jpeg", "opus")]
    data["tasks"] = [t for t in data["tasks"] if t["name"] == "asr"]
    job = resolve(parse_job(data))
    items = list(iter_items(Planner(job, "", {}, []), shards(job)))
    rows = {d: Encode(job)(Load(job)([i for i in items if i["dataset"] == d])) for d in ("photos", "speech")}
    asr = Predict(job, "asr", "cpu")
    asr(rows["photos"])
    assert asr.task.model_id == "" and asr.provenance is None  # not loaded
    assert all(r["results"] == {} for r in rows["photos"])
    asr(rows["speech"])
    assert asr.task.model_id and asr.provenance["device"] == "cpu"
    assert all(r["results"]["asr"]["model"] == asr.task.model_id for r in rows["speech"])
