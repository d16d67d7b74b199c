"""Classification scores by class id where the dataset's ids are the model's, and refuses labels
that name no class or several before any work."""

import io

import numpy as np
import polars as pl
import pytest
from conftest import photo
from PIL import Image

from mpq.runner import run_job
from mpq.spec import parse_job
from mpq.summary import read_results

NAMES = ["kite", "crane", "goose", "crane", *(f"c{i}" for i in range(4, 10))]  # as ImageNet: "crane" is 134 and 517


@pytest.fixture
def crane_model(tmp_path):
    """A tiny ViT, as save_pretrained writes it, that always answers class 1 (crane, the bird)."""
    import torch
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    config = ViTConfig(
        image_size=32, patch_size=16, hidden_size=16, num_hidden_layers=1, num_attention_heads=1, intermediate_size=16,
        num_labels=10, id2label=dict(enumerate(NAMES)), label2id={n: i for i, n in enumerate(NAMES)},
    )
    model = ViTForImageClassification(config)
    with torch.no_grad():
        model.classifier.weight.zero_()
        model.classifier.bias.copy_(torch.eye(10)[1] * 5)
    path = tmp_path / "crane-vit"
    model.save_pretrained(path)
    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(path)
    return str(path)


@pytest.fixture
def crane_dataset(tmp_path):
    """A local dataset in the hub's parquet layout whose ClassLabel ids are the model's; its names
    must be unique, so class 1 is spelled otherwise."""
    import datasets

    images = []
    for i in range(3):
        buf = io.BytesIO()
        Image.fromarray(photo(32, 32, seed=i)).save(buf, format="PNG")
        images.append({"bytes": buf.getvalue(), "path": None})
    names = ["kite", "crane, bird", *NAMES[2:]]
    feats = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=names)})
    ds = datasets.Dataset.from_dict({"image": images, "label": [1, 3, 2]}, features=feats)
    root = tmp_path / "cranes"
    (root / "data").mkdir(parents=True)
    ds.to_parquet(root / "data" / "validation-00000-of-00001.parquet")
    return str(root)


def job(source, model):
    return parse_job({
        "name": "cranes", "datasets": [{"name": "d", "source": source}],
        "tasks": [{"name": "classify", "model": model, "batch_size": 4}],
    })


def test_the_same_name_under_two_ids_is_scored_by_id(crane_dataset, crane_model, tmp_path):
    out = tmp_path / "out"
    run_job(job({"hf": crane_dataset, "split": "validation"}, crane_model), str(out), engine="serial", progress=False)
    df = read_results(str(out)).sort("sample_id")
    assert df["error"].null_count() == 3 and df["prediction"].to_list() == ["crane"] * 3
    assert df["label"].to_list() == ["crane, bird", "crane", "goose"]
    assert df["correct"].to_list() == [True, False, False]  # by id: the machine (3) is not the bird (1)


def test_labels_that_name_no_class_or_several_stop_the_job_before_work(crane_model, tmp_path):
    root = tmp_path / "folder"
    for label in ("crane", "zebra", "kite"):
        (root / label).mkdir(parents=True)
        Image.fromarray(photo(32, 32)).save(root / label / "a.png")
    out = tmp_path / "out"
    with pytest.raises(ValueError) as err:
        run_job(job({"folder": str(root), "labels": "parent"}, crane_model), str(out), engine="serial", progress=False)
    message = str(err.value)
    assert "\n" not in message and "2 of its 3 labels" in message, message
    assert "'crane' names 2 classes of the model (1, 3)" in message and "'zebra' is none of the model's classes" in message
    assert not (out / "results").exists() or not list((out / "results").glob("*.parquet"))


def test_unlabelled_packaged_photos_need_no_label_check():
    from mpq import registry

    cls = registry.get("source", "samples")
    assert cls(cls.Options(samples="photos")).classes() is None
    assert [c.name for c in cls(cls.Options(samples="skimage", names=["coffee"])).classes()] == ["coffee"]
