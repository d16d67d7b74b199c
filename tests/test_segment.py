"""Segmentation: scoring by hand, the label-map source, and a tiny SegFormer through the pipeline."""

import io

import numpy as np
import polars as pl
import pytest
from helpers import photo
from helpers import tiny_segformer as write_segformer
from PIL import Image

from mpq import media, registry
from mpq.tasks.segment import iou_counts, reduce_labels

IGNORE = 255


def test_iou_counts_hand_worked_with_ignored_pixels_and_an_absent_class():
    label = np.array([[0, 0, 1], [1, IGNORE, 2], [2, 2, IGNORE]])
    pred = np.array([[0, 1, 1], [1, 0, 2], [0, 2, 2]])  # predictions on ignored pixels must not count
    c = iou_counts(pred, label, num_classes=4)
    # valid (pred, label) pairs: (0,0) (1,0) (1,1) (1,1) (2,2) (0,2) (2,2)
    assert c["intersection"] == [1, 2, 2, 0]
    assert c["union"] == [3, 3, 3, 0]  # class 3: in neither map
    assert (c["pixels_correct"], c["pixels_valid"]) == (5, 7)


def test_dataset_level_miou_sums_counts_over_the_split_before_averaging_classes():
    a = iou_counts(np.array([[0, 1, 1], [1, 0, 2], [0, 2, 2]]), np.array([[0, 0, 1], [1, IGNORE, 2], [2, 2, IGNORE]]), 4)
    b = iou_counts(np.array([[3, 0], [1, 0]]), np.array([[3, 3], [IGNORE, 0]]), 4)
    assert b["intersection"] == [1, 0, 0, 1] and b["union"] == [2, 0, 0, 2]
    rows = pl.DataFrame([a, b])
    agg = registry.get("task", "segment").aggregate(rows)
    # summed: I = [2, 2, 2, 1], U = [5, 3, 3, 2]
    assert agg["mIoU"] == pytest.approx((2 / 5 + 2 / 3 + 2 / 3 + 1 / 2) / 4)
    assert agg["pixel_accuracy"] == pytest.approx(7 / 10)
    # (the mean of per-sample mIoUs would be (5/9 + 1/2) / 2 = 0.528, not 0.558)


def test_sums_hold_each_rows_class_counts_and_zeros_where_a_row_has_none():
    a = iou_counts(np.array([[0, 1], [1, 2]]), np.array([[0, 1], [2, 2]]), 4)
    b = iou_counts(np.array([[3, 0]]), np.array([[3, 3]]), 4)
    none = {"intersection": None, "union": None, "pixels_correct": None, "pixels_valid": None}
    sums = registry.get("task", "segment").sums(pl.DataFrame([a, none, b]))
    assert sums["intersection"].tolist() == [a["intersection"], [0] * 4, b["intersection"]]
    assert sums["union"].tolist() == [a["union"], [0] * 4, b["union"]]
    assert sums["counted"].tolist() == [1, 0, 1]


def test_reduce_labels_makes_class_zero_the_ignored_one():
    out = reduce_labels(np.array([[0, 1, 150], [IGNORE, 2, 0]], dtype=np.uint8))
    assert out.tolist() == [[IGNORE, 0, 149], [IGNORE, 1, IGNORE]]


def test_iou_counts_refuses_out_of_range_classes_and_size_mismatch():
    with pytest.raises(ValueError, match="outside"):
        iou_counts(np.zeros((2, 2), int), np.full((2, 2), 7), 4)
    with pytest.raises(ValueError, match="differ in size"):
        iou_counts(np.zeros((2, 3), int), np.zeros((3, 2), int), 4)


# --- the real pipeline on local data -------------------------------------------------------

H, W = 37, 53  # odd sizes: labels must come back at exactly this size


def png(array) -> dict:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return {"bytes": buf.getvalue(), "path": None}


@pytest.fixture
def ade_like(tmp_path):
    """A local dataset in the hub's parquet layout: images and ADE-style annotations
    (0 = "other", classes 1..4), one of them grayscale, one with a mismatched label map."""
    import datasets

    rng = np.random.default_rng(0)
    images, maps = [], []
    for i in range(4):
        img = photo(H, W, seed=i)
        ann = np.zeros((H, W), np.uint8)
        ann[: H // 2, : W // 2], ann[: H // 2, W // 2 :], ann[H // 2 :, : W // 3] = 1, 2, 3
        ann[rng.random((H, W)) < 0.1] = 0
        if i == 1:
            img = np.asarray(Image.fromarray(img).convert("L"))
        if i == 3:
            ann = ann[:-1]
        images.append(png(img))
        maps.append(png(ann))
    feats = datasets.Features({"image": datasets.Image(), "annotation": datasets.Image(), "scene": datasets.Value("string")})
    ds = datasets.Dataset.from_dict({"image": images, "annotation": maps, "scene": ["a"] * 4}, features=feats)
    root = tmp_path / "ade"
    (root / "data").mkdir(parents=True)
    ds.to_parquet(root / "data" / "validation-00000-of-00001.parquet")
    return root


def test_hf_source_reads_label_maps_unconverted(ade_like):
    source = registry.get("source", "hf")(registry.get("source", "hf").Options(hf=str(ade_like), label_map="annotation"))
    assert source.ids() == ["0", "1", "2", "3"]
    s = source.load("1")
    assert s.media.pixels.shape == (H, W, 3) and s.media.conversion == "L → RGB"
    assert s.target.shape == (H, W) and set(np.unique(s.target)) <= {0, 1, 2, 3}
    with pytest.raises(Exception, match="label map is"):
        source.load("3")
    with pytest.raises(ValueError, match="either `label`"):
        registry.get("source", "hf").Options(hf=str(ade_like), label="scene", label_map="annotation")


@pytest.mark.slow
def test_tiny_segformer_through_the_pipeline(ade_like, tiny_segformer, tmp_path):
    import torch
    import torch.nn.functional as F
    from transformers import SegformerForSemanticSegmentation, SegformerImageProcessor

    from mpq.means import summarize
    from mpq.reading import read_results
    from mpq.runner import run_job
    from mpq.spec import parse_job

    job = parse_job({
        "name": "seg",
        "datasets": [{"name": "ade", "source": {"hf": str(ade_like), "label_map": "annotation"}}],
        "codecs": [{"name": "jpeg", "settings": [5]}, {"name": "avif", "settings": [20]}],
        "tasks": [{"name": "segment", "model": tiny_segformer, "batch_size": 2}],
        "metrics": ["psnr"],
    })
    out = str(tmp_path / "out")
    run_job(job, out, engine="serial", progress=False)
    df = read_results(out)
    assert df.height == 4 * 3
    bad = df.filter(pl.col("sample_id") == "3")
    assert bad["error"].str.contains("label map is").all()
    ok = df.filter(pl.col("error").is_null())
    assert ok.height == 9 and (ok["task_type"] == "segment").all()
    assert ok["intersection"].list.len().eq(4).all()

    # Independently, for the baseline rows: the model called directly, logits upsampled to
    # the label's size, labels reduced by hand (0 → ignored, k → k - 1).
    from mpq.sources.hf import HFSource

    source = HFSource(HFSource.Options(hf=str(ade_like), label_map="annotation"))
    model = SegformerForSemanticSegmentation.from_pretrained(tiny_segformer).eval()
    processor = SegformerImageProcessor.from_pretrained(tiny_segformer)
    for sid in ("0", "1", "2"):
        s = source.load(sid)
        with torch.inference_mode():
            logits = model(**processor(images=[s.media.pixels], return_tensors="pt")).logits
        pred = F.interpolate(logits, size=(H, W), mode="bilinear", align_corners=False)[0].argmax(0).numpy()
        label = np.where(s.target == 0, IGNORE, s.target.astype(int) - 1)
        valid = label != IGNORE
        row = ok.filter((pl.col("sample_id") == sid) & (pl.col("codec") == "none")).row(0, named=True)
        assert row["pixels_valid"] == valid.sum() and row["pixels_correct"] == (pred == label)[valid].sum()
        for k in range(4):
            assert row["intersection"][k] == ((pred == k) & (label == k) & valid).sum()
            assert row["union"][k] == (((pred == k) | (label == k)) & valid).sum()

    summary = summarize(df)
    base = summary.filter(pl.col("codec") == "none").row(0, named=True)
    baseline = ok.filter(pl.col("codec") == "none")
    inter = np.array(baseline["intersection"].to_list()).sum(0)
    union = np.array(baseline["union"].to_list()).sum(0)
    assert base["mIoU"] == pytest.approx(np.mean(inter[union > 0] / union[union > 0]))
    assert summary.filter(pl.col("codec") == "jpeg")["bpp"][0] > 0


def test_a_config_with_only_the_old_reduce_labels_key_is_honoured(ade_like, tmp_path):
    """The nvidia ADE20k SegFormer configs predate `do_reduce_labels`; transformers 5 loads their
    `"reduce_labels": true` with do_reduce_labels=False, and labels were scored shifted by one."""
    import json
    from pathlib import Path

    from mpq.reading import read_results
    from mpq.runner import run_job
    from mpq.spec import parse_job

    tiny_segformer = write_segformer(tmp_path / "three", 3)  # three classes: ADE-style labels 1..3 fit only once reduced to 0..2
    config = Path(tiny_segformer) / "preprocessor_config.json"
    old = json.loads(config.read_text())
    old["reduce_labels"] = old.pop("do_reduce_labels")  # as the hub's older configs hold it
    config.write_text(json.dumps(old))

    task_cls = registry.get("task", "segment")
    task = task_cls(task_cls.Options(model=tiny_segformer))
    task.load()
    assert task.reduce is True

    def run(**options):
        job = parse_job({
            "name": "seg", "datasets": [{"name": "ade", "source": {"hf": str(ade_like), "label_map": "annotation"}}],
            "tasks": [{"name": "segment", "model": tiny_segformer, "batch_size": 2, **options}],
        })
        out = tmp_path / f"out{len(options)}"
        run_job(job, str(out), engine="serial", progress=False)
        return read_results(str(out)).sort("sample_id")

    df = run()
    assert df["reduce_labels"].to_list() == [True] * 3 + [None]  # the value used, in every row (sample 3 fails to load)
    assert df.filter(pl.col("sample_id") != "3")["error"].is_null().all()
    # Not reduced, label 3 is beyond the model's 3 classes: a clear error row, not a silent score.
    raw = run(reduce_labels=False)
    assert raw["task_options"].str.contains('"reduce_labels": false').all()
    ok = raw.filter(pl.col("sample_id") != "3")
    assert ok["error"].str.contains("class 3 .*3 classes.*reduce_labels").all(), ok["error"].to_list()


def test_a_label_map_turns_with_its_exif_rotated_image(tmp_path):
    """The image is made upright from its EXIF orientation; its label map (stored as the image's
    pixels were) must turn with it, or prediction and label are misaligned."""
    import datasets

    label = np.zeros((H, W), np.uint8)
    label[: H // 2, : W // 3], label[H // 2 :, W // 2 :] = 1, 2
    pixels = np.repeat((label * 100)[..., None], 3, axis=2).astype(np.uint8)  # the label, visible in the image
    exif = Image.Exif()
    exif[0x0112] = 6
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG", exif=exif)
    feats = datasets.Features({"image": datasets.Image(), "annotation": datasets.Image()})
    ds = datasets.Dataset.from_dict({"image": [{"bytes": buf.getvalue(), "path": None}], "annotation": [png(label)]}, features=feats)
    root = tmp_path / "rotated"
    (root / "data").mkdir(parents=True)
    ds.to_parquet(root / "data" / "validation-00000-of-00001.parquet")
    source = registry.get("source", "hf")(registry.get("source", "hf").Options(hf=str(root), label_map="annotation"))
    s = source.load("0")
    assert (s.media.height, s.media.width, s.media.orientation) == (W, H, 6) and "EXIF orientation 6" in s.media.conversion
    assert np.array_equal(s.media.pixels[..., 0], s.target * 100)


def numpy_confusion(pred, label, num_classes, ignore=IGNORE):
    """Intersection, union, correct and valid pixels from a confusion matrix built directly."""
    valid = label != ignore
    m = np.zeros((num_classes, num_classes), np.int64)
    np.add.at(m, (label[valid].astype(int), pred[valid].astype(int)), 1)
    inter = np.diag(m)
    return inter.tolist(), (m.sum(0) + m.sum(1) - inter).tolist(), int(inter.sum()), int(valid.sum())


def test_device_counts_equal_a_numpy_confusion_matrix_and_iou_counts():
    import torch

    from mpq.tasks.segment import counts_row, device_counts

    rng = np.random.default_rng(3)
    pred = rng.integers(0, 6, (19, 23))
    label = rng.integers(0, 6, (19, 23)).astype(np.uint8)
    label[rng.random(label.shape) < 0.2] = IGNORE
    label[label == 5] = 0  # class 5 in predictions only
    got = counts_row(device_counts(torch.from_numpy(pred), torch.from_numpy(label), 6).numpy(), 6)
    inter, union, correct, valid = numpy_confusion(pred, label, 6)
    assert got == {"intersection": inter, "union": union, "pixels_correct": correct, "pixels_valid": valid}
    assert got == iou_counts(pred, label, 6) and union[5] > 0 and inter[5] == 0
    for bad, value in ((7, 7), (-3, -3)):  # refused as iou_counts refuses, with the offending class
        label_bad = label.astype(np.int64)
        label_bad[0, 0] = bad
        with pytest.raises(ValueError, match=f"holds class {value} .*6 classes"):
            counts_row(device_counts(torch.from_numpy(pred), torch.from_numpy(label_bad), 6).numpy(), 6)
    everything_ignored = counts_row(device_counts(torch.from_numpy(pred), torch.full(label.shape, IGNORE), 6).numpy(), 6)
    assert everything_ignored == iou_counts(pred, np.full(label.shape, IGNORE), 6)


def test_predict_equals_the_model_and_numpy_counts_image_by_image(tiny_segformer):
    """A batch of two image sizes, one sample without a label map: each row's prediction is the
    model's on the batch, upsampled and arg-maxed image by image, and its counts are NumPy's."""
    import torch
    import torch.nn.functional as F

    task_cls = registry.get("task", "segment")
    task = task_cls(task_cls.Options(model=tiny_segformer))
    task.load()
    images = [photo(H, W, seed=1), photo(H + 6, W - 9, seed=2), photo(H, W, seed=3)]
    rng = np.random.default_rng(0)
    labels = [rng.integers(0, 5, im.shape[:2]).astype(np.uint8) for im in images]
    labels[0][:3] = IGNORE
    targets = [labels[0], None, labels[2]]
    rows = task.predict([media.Image(im) for im in images], targets)

    with torch.inference_mode():
        logits = task.model(**task.processor(images=images, return_tensors="pt")).logits
    for image, target, lg, row in zip(images, targets, logits, rows):
        pred = F.interpolate(lg[None], size=image.shape[:2], mode="bilinear", align_corners=False)[0].argmax(0).numpy()
        assert np.array_equal(row["_pred"], pred)
        if target is None:
            assert "intersection" not in row and row["score"] is None
            continue
        label = np.where((target == 0) | (target == IGNORE), IGNORE, target.astype(int) - 1)  # reduced by hand
        inter, union, correct, valid = numpy_confusion(pred, label, 4)
        assert (row["intersection"], row["union"], row["pixels_correct"], row["pixels_valid"]) == (inter, union, correct, valid)
        assert row["pixel_accuracy"] == correct / valid
        present = np.array(union) > 0
        assert row["score"] == pytest.approx(np.mean(np.array(inter)[present] / np.array(union)[present]))
