"""Classification scores by class id where the dataset's ids are the model's, and refuses labels
that name no class or several before any work."""

import io

import polars as pl
import pytest
from helpers import photo, tiny_vit
from PIL import Image

from mpq.reading import read_results
from mpq.runner import run_job
from mpq.spec import parse_job

NAMES = ["kite", "crane", "goose", "crane", *(f"c{i}" for i in range(4, 10))]  # as ImageNet: "crane" is 134 and 517


@pytest.fixture(scope="session")
def crane_model(tmp_path_factory):
    """A tiny ViT, as save_pretrained writes it, that always answers class 1 (crane, the bird)."""
    return tiny_vit(tmp_path_factory.mktemp("models") / "crane-vit", NAMES, 1)


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


IMAGENET_STYLE = ["tabby, tabby cat", "tiger cat", "Persian cat", "espresso", "coffee mug", "coffeepot", "crane", "crane"]


@pytest.fixture(scope="session")
def tabby_model(tmp_path_factory):
    """A tiny ViT, as save_pretrained writes it, with ImageNet's comma-separated class names; it
    always answers class 0 (tabby, tabby cat)."""
    return tiny_vit(tmp_path_factory.mktemp("models") / "tabby-vit", IMAGENET_STYLE, 0)


def class_folder(root, labels):
    for i, label in enumerate(labels):
        (root / label).mkdir(parents=True)
        Image.fromarray(photo(32, 32, seed=i)).save(root / label / "a.png")
    return str(root)


def test_a_folder_label_matches_a_class_by_one_of_its_synonyms(tabby_model, tmp_path):
    folder = class_folder(tmp_path / "photos", ["tabby", "Espresso"])
    out = tmp_path / "out"
    run_job(job({"folder": folder, "labels": "parent"}, tabby_model), str(out), engine="serial", progress=False)
    df = read_results(str(out)).sort("sample_id")
    assert df["error"].null_count() == 2 and df["label"].to_list() == ["Espresso", "tabby"]
    assert df["prediction"].to_list() == ["tabby, tabby cat"] * 2 and df["correct"].to_list() == [False, True]


def nearest(message: str, label: str) -> list[str]:
    import re

    return re.findall(r"'([^']*)'", message.split(f"label {label!r} is none of the model's classes (nearest: ")[1].split(")")[0])


def test_a_label_that_matches_no_class_stops_the_job_with_the_nearest_names_and_the_ways_out(tabby_model, tmp_path):
    folder = class_folder(tmp_path / "photos", ["cat", "coffee"])
    out = tmp_path / "out"
    with pytest.raises(ValueError) as err:
        run_job(job({"folder": folder, "labels": "parent"}, tabby_model), str(out), engine="serial", progress=False)
    message = str(err.value)
    assert "\n" not in message and "2 of its 2 labels" in message, message
    nearest_cat = nearest(message, "cat")
    assert len(nearest_cat) == 5 and set(nearest_cat[:3]) == {"tabby, tabby cat", "tiger cat", "Persian cat"}, nearest_cat
    assert set(nearest(message, "coffee")[:2]) == {"coffee mug", "coffeepot"}
    assert "class_map" in message and "labels: none" in message
    assert not (out / "results").exists()


@pytest.mark.parametrize("kind", ["inline", "yaml", "csv"])
def test_a_class_map_names_the_model_class_of_each_folder(tabby_model, tmp_path, kind):
    folder = class_folder(tmp_path / "photos", ["cat", "coffee"])
    mapping = {"cat": "tabby cat", "coffee": "espresso"}
    if kind == "yaml":
        (tmp_path / "classes.yaml").write_text("cat: tabby cat\ncoffee: espresso\n")
        mapping = str(tmp_path / "classes.yaml")
    elif kind == "csv":
        (tmp_path / "classes.csv").write_text("# folder,class\ncat,tabby cat\ncoffee, espresso\n")
        mapping = str(tmp_path / "classes.csv")
    out = tmp_path / "out"
    run_job(job({"folder": folder, "labels": "parent", "class_map": mapping}, tabby_model), str(out), engine="serial", progress=False)
    df = read_results(str(out)).sort("sample_id")
    assert df["error"].null_count() == 2 and df["label"].to_list() == ["tabby cat", "espresso"]
    assert df["correct"].to_list() == [True, False]


def test_labels_none_scores_agreement_only(tabby_model, tmp_path):
    folder = class_folder(tmp_path / "photos", ["cat", "coffee"])
    out = tmp_path / "out"
    spec = parse_job({
        "name": "n", "datasets": [{"name": "d", "source": {"folder": folder, "labels": "none"}}],
        "codecs": [{"name": "jpeg", "settings": [50]}], "tasks": [{"name": "classify", "model": tabby_model}],
    })
    run_job(spec, str(out), engine="serial", progress=False)
    df = read_results(str(out))
    coded = df.filter(pl.col("codec") != "none")
    assert df["error"].null_count() == 4 and df["correct"].null_count() == 4 and coded["agreement"].null_count() == 0


def test_a_bad_class_map_is_refused_with_the_job_checks(tmp_path):
    from mpq.spec import JobSpecError

    (tmp_path / "bad.csv").write_text("cat,tabby cat,extra\n")
    for class_map, expected in ((str(tmp_path / "missing.yaml"), "cannot read"), (str(tmp_path / "bad.csv"), "each line")):
        with pytest.raises(JobSpecError) as err:
            job({"folder": str(tmp_path), "labels": "parent", "class_map": class_map}, "builtin:tiny-vit")
        assert "datasets[0].source.class_map" in str(err.value) and expected in str(err.value)
    with pytest.raises(JobSpecError, match="needs `labels: parent`"):
        job({"folder": str(tmp_path), "class_map": {"cat": "tabby cat"}}, "builtin:tiny-vit")


@pytest.mark.slow
def test_the_builtin_imagenet_classifier_takes_synonyms_and_names_the_nearest_classes(tmp_path):
    from mpq import registry

    task = registry.get("task", "classify")(registry.get("task", "classify").Options(model="builtin:efficientnet-lite0"))
    source = registry.get("source", "folder")
    task.check_dataset("d", source(source.Options(folder=class_folder(tmp_path / "ok", ["tabby", "espresso", "Tiger Cat"]), labels="parent")))
    with pytest.raises(ValueError) as err:
        task.check_dataset("d", source(source.Options(folder=class_folder(tmp_path / "bad", ["cat", "espresso"]), labels="parent")))
    assert "1 of its 2 labels" in str(err.value)
    names = nearest(str(err.value), "cat")
    assert len(names) == 5 and {"tabby, tabby cat", "tiger cat", "Persian cat", "Siamese cat, Siamese"} <= set(names), names
