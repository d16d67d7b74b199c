"""Every shipped job file is valid, and the study's image rows are in jobs/all.yaml."""

import pytest
from helpers import ROOT

from mpq.job import resolve
from mpq.spec import load_job

JOBS = sorted((ROOT / "jobs").glob("*.yaml"))

# The study (Jacobellis et al. 2024): task model → (dataset id, config, split, samples in the study; None = whole split)
STUDY_IMAGE_ROWS = {
    "google/vit-base-patch16-224": ("ILSVRC/imagenet-1k", None, "validation", 1000),
    "nateraw/vit-base-beans": ("beans", None, "validation", None),
    "lxyuan/vit-xray-pneumonia-classification": ("keremberke/chest-xray-classification", "full", "validation", None),
    "nvidia/segformer-b0-finetuned-ade-512-512": ("scene_parse_150", "scene_parsing", "validation", None),
}
IMAGE_CODECS = {"jpeg", "webp", "avif", "jpegxl", "mbt2018", "cheng2020-anchor", "hific"}
IMAGE_METRICS = {"psnr", "ssim", "ms_ssim", "lpips", "lpips_vgg"}


@pytest.mark.parametrize("path", JOBS, ids=[p.name for p in JOBS])
def test_job_file_is_valid(path):
    job = load_job(path)
    assert job.name == path.stem


def test_all_yaml_holds_every_image_row_of_the_study():
    job = load_job(ROOT / "jobs" / "all.yaml")
    datasets = {d.name: d for d in job.datasets}
    seen = {}
    for task in job.tasks:
        model = resolve(job).tasks[task.task_id].options.model
        if model not in STUDY_IMAGE_ROWS:
            continue
        assert task.datasets and len(task.datasets) == 1, f"{task.task_id} must run on its own dataset only"
        d = datasets[task.datasets[0]]
        src = d.source
        seen[model] = (src["hf"], src.get("config"), src["split"], d.limit)
    assert seen == STUDY_IMAGE_ROWS
    assert IMAGE_CODECS <= {c.name for c in job.codecs}
    assert IMAGE_METRICS <= {m.name for m in job.metrics}
    study_defaults = {"jpeg": 5, "webp": 0, "mbt2018": 1, "hific": "low"}  # the study's settings are in each default sweep
    for c in job.codecs:
        if c.name in study_defaults:
            assert study_defaults[c.name] in job.settings(c)
