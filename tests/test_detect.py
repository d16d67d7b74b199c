"""Detection: COCO mAP from the rows against pycocotools called directly, the agreement F1,
the hf source's boxes, and a tiny random DETR through mpq's loader."""

import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from helpers import photo
from test_segment import png

from mpq import registry
from mpq.components import ClassTarget
from mpq.media import Image
from mpq.tasks.detect import coco_eval, matched_f1


def pycocotools_map(samples, tmp_path):
    """mAP@[.5:.95] and mAP@.5 the plain pycocotools way: a ground-truth JSON file and a result list (x, y, w, h)."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    names = sorted({n for s in samples for n in s["gt_labels"] + s["det_labels"]})
    gt, dets = {"images": [], "annotations": [], "categories": [{"id": i + 10, "name": n} for i, n in enumerate(names)]}, []
    for i, s in enumerate(samples):
        gt["images"].append({"id": 100 + i})
        for (x0, y0, x1, y1), n in zip(s["gt_boxes"], s["gt_labels"]):
            gt["annotations"].append({"id": len(gt["annotations"]) + 7, "image_id": 100 + i, "category_id": names.index(n) + 10,
                                      "bbox": [x0, y0, x1 - x0, y1 - y0], "area": (x1 - x0) * (y1 - y0), "iscrowd": 0})
        dets += [{"image_id": 100 + i, "category_id": names.index(n) + 10, "bbox": [x0, y0, x1 - x0, y1 - y0], "score": sc}
                 for (x0, y0, x1, y1), sc, n in zip(s["det_boxes"], s["det_scores"], s["det_labels"])]
    path = tmp_path / "gt.json"
    path.write_text(json.dumps(gt))
    ev = COCOeval(coco := COCO(str(path)), coco.loadRes(dets), "bbox")
    ev.evaluate()
    ev.accumulate()
    ev.summarize()
    return ev.stats[0], ev.stats[1]


GT = {"gt_boxes": [[10.0, 10.0, 50.0, 40.0], [60.0, 5.0, 90.0, 35.0]], "gt_labels": ["cat", "dog"]}


def test_detections_equal_to_the_ground_truth_score_one_and_a_missed_box_its_hand_worked_value(tmp_path):
    perfect = GT | {"det_boxes": GT["gt_boxes"], "det_scores": [0.9, 0.8], "det_labels": GT["gt_labels"]}
    assert coco_eval([perfect]) == pytest.approx((1.0, 1.0))
    # Two cats, one found exactly: recall reaches 0.5 at precision 1, so 51 of COCO's 101
    # recall points (0, 0.01, ..., 0.5) have precision 1, the rest 0, at every IoU threshold.
    half = {"gt_boxes": GT["gt_boxes"], "gt_labels": ["cat", "cat"], "det_boxes": GT["gt_boxes"][:1], "det_scores": [0.9], "det_labels": ["cat"]}
    assert coco_eval([half]) == pytest.approx((51 / 101, 51 / 101))
    assert coco_eval([half]) == pytest.approx(pycocotools_map([half], tmp_path))
    assert coco_eval([half | {"det_boxes": [], "det_scores": [], "det_labels": []}]) == (0.0, 0.0)
    assert coco_eval([{"gt_boxes": [], "gt_labels": [], "det_boxes": [], "det_scores": [], "det_labels": []}]) == (None, None)


def random_samples(seed, n=6):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        k = int(rng.integers(0, 5))
        xy = rng.uniform(0, 80, (k, 2))
        gt = np.hstack([xy, xy + rng.uniform(5, 40, (k, 2))])
        det = np.vstack([gt + rng.normal(0, 4, gt.shape), rng.uniform(0, 100, (2, 4)).cumsum(1) / 2])  # near misses and strays
        labels = [str(c) for c in rng.choice(["cat", "dog", "cow"], k)]
        out.append({"gt_boxes": gt.tolist(), "gt_labels": labels, "det_boxes": det.tolist(), "det_scores": rng.random(len(det)).tolist(),
                    "det_labels": labels + [str(c) for c in rng.choice(["cat", "dog", "bird"], 2)]})
    return out


def test_aggregate_evaluates_the_split_as_pycocotools_does(tmp_path):
    samples = random_samples(0)
    rows = pl.DataFrame([s | {"agreement": 0.5, "score": None} for s in samples]
                        + [{"agreement": 1.0, "det_boxes": [[1.0, 1.0, 2.0, 2.0]], "det_scores": [0.9], "det_labels": ["cat"]}])  # unlabelled
    agg = registry.get("task", "detect").aggregate(rows)
    want = pycocotools_map(samples, tmp_path)
    assert 0 < agg["mAP"] < agg["mAP50"] < 1
    assert (agg["mAP"], agg["mAP50"]) == pytest.approx(want)
    assert agg["agreement"] == pytest.approx((0.5 * 6 + 1) / 7)
    # not the mean of per-sample mAPs
    per_sample = [coco_eval([s])[0] for s in samples if s["gt_boxes"]]
    assert abs(np.mean(per_sample) - agg["mAP"]) > 1e-3


def test_matched_f1_counts_same_class_boxes_at_iou_half_greedily_by_score():
    ref, labels = GT["gt_boxes"], GT["gt_labels"]
    assert matched_f1(ref, labels, [0.9, 0.8], ref, labels) == 1.0
    assert matched_f1([], [], [], [], []) == 1.0 and matched_f1([], [], [], ref, labels) == 0.0
    assert matched_f1(ref, ["cat", "cat"], [0.9, 0.8], ref, labels) == pytest.approx(2 * 1 / 4)  # the dog called a cat
    # IoU of [10, 10, 50, 40] with [10, 10, 50, 25] is 0.5 (counts), with [10, 10, 50, 24] below
    assert matched_f1([[10, 10, 50, 25]], ["cat"], [1.0], ref, labels) == pytest.approx(2 / 3)
    assert matched_f1([[10, 10, 50, 24]], ["cat"], [1.0], ref, labels) == 0.0
    # two detections of one box: the higher-scoring one takes it, the other is a false positive
    assert matched_f1([[10, 10, 50, 40], [11, 10, 50, 40]], ["cat", "cat"], [0.2, 0.9], ref[:1], ["cat"]) == pytest.approx(2 / 3)
    for s in random_samples(1):
        f1 = matched_f1(s["det_boxes"], s["det_labels"], s["det_scores"], s["gt_boxes"], s["gt_labels"])
        assert 0 <= f1 <= 1


@pytest.fixture
def tiny_detr():
    """mpq's own tiny random DETR (its ResNet backbone built, nothing downloaded), written by ``save_pretrained``."""
    from mpq.tasks.detect import tiny_detr

    return tiny_detr()


def test_predict_equals_the_model_post_processed_directly(tiny_detr):
    import torch
    from transformers import DetrForObjectDetection, DetrImageProcessor

    task_cls = registry.get("task", "detect")
    task = task_cls(task_cls.Options(model=tiny_detr, threshold=0.0))
    task.load()
    pixels = [photo(40, 56, seed=1), photo(40, 56, seed=2)]
    rows = task.predict([Image(p) for p in pixels], [{"boxes": GT["gt_boxes"], "labels": GT["gt_labels"]}, None])
    model, processor = DetrForObjectDetection.from_pretrained(tiny_detr).eval(), DetrImageProcessor.from_pretrained(tiny_detr)
    with torch.inference_mode():
        out = model(**processor(images=pixels, return_tensors="pt"))
    found = processor.post_process_object_detection(out, threshold=0.0, target_sizes=[(40, 56)] * 2)
    for row, det in zip(rows, found):
        assert len(row["det_boxes"]) == 8
        assert np.allclose(row["det_boxes"], det["boxes"].numpy()) and np.allclose(row["det_scores"], det["scores"].numpy())
        assert row["det_labels"] == [["cat", "dog"][int(k)] for k in det["labels"]]
    assert rows[0]["gt_labels"] == ["cat", "dog"] and rows[0]["score"] == coco_eval([rows[0]])[0]
    assert "gt_boxes" not in rows[1] and rows[1]["score"] is None
    with pytest.raises(ValueError, match="boxes, not a ClassTarget target: give the hf source `boxes: COLUMN`"):
        task.predict([Image(pixels[0])], [ClassTarget("cat")])


@pytest.fixture
def coco_like(tmp_path):
    return hf_boxes(tmp_path / "coco")


def hf_boxes(root) -> str:
    """A split in the hub's layout of detection-datasets/coco: objects with bbox and a ClassLabel category."""
    import datasets

    feats = datasets.Features({"image": datasets.Image(), "objects": {
        "bbox": datasets.Sequence(datasets.Sequence(datasets.Value("float32"), length=4)),
        "category": datasets.Sequence(datasets.ClassLabel(names=["cat", "dog"]))}})
    objects = [{"bbox": [[1, 2, 30, 20], [5, 5, 10, 10]], "category": [1, 0]}, {"bbox": [], "category": []}]
    ds = datasets.Dataset.from_dict({"image": [png(photo(40, 56, seed=i)) for i in range(2)], "objects": objects}, features=feats)
    (root / "data").mkdir(parents=True)
    ds.to_parquet(root / "data" / "validation-00000-of-00001.parquet")
    return str(root)


def test_hf_source_reads_boxes_with_class_names(coco_like):
    hf = registry.get("source", "hf")
    s = hf(hf.Options(hf=coco_like, boxes="objects")).load("0")
    assert s.target == {"boxes": [[1, 2, 30, 20], [5, 5, 10, 10]], "labels": ["dog", "cat"]}
    s = hf(hf.Options(hf=coco_like, boxes="objects", box_format="xywh")).load("0")
    assert s.target["boxes"] == [[1, 2, 31, 22], [5, 5, 15, 15]]
    assert hf(hf.Options(hf=coco_like, boxes="objects")).load("1").target == {"boxes": [], "labels": []}
    import datasets  # objects as a list of structs, not a dict of lists

    feats = datasets.Features({"image": datasets.Image(), "objects": datasets.List({
        "bbox": datasets.List(datasets.Value("float32"), length=4), "category": datasets.ClassLabel(names=["cat", "dog"])})})
    root = Path(coco_like).parent / "listed"
    (root / "data").mkdir(parents=True)
    datasets.Dataset.from_dict({"image": [png(photo(40, 56))], "objects": [[{"bbox": [1, 2, 30, 20], "category": 1}]]},
                               features=feats).to_parquet(root / "data" / "validation-00000-of-00001.parquet")
    assert hf(hf.Options(hf=str(root), boxes="objects")).load("0").target == {"boxes": [[1, 2, 30, 20]], "labels": ["dog"]}
    with pytest.raises(ValueError, match="not label and boxes"):
        hf.Options(hf=coco_like, label="x", boxes="objects")


@pytest.mark.slow
def test_tiny_detr_through_the_pipeline(coco_like, tiny_detr, tmp_path):
    """The builtin model: its rows carry a pipeline_check; the split's mAP is COCOeval's on the baseline rows."""
    from mpq.means import summarize
    from mpq.reading import read_results
    from mpq.runner import run_job
    from mpq.spec import parse_job

    job = parse_job({
        "name": "det", "datasets": [{"name": "coco", "source": {"hf": coco_like, "boxes": "objects"}}],
        "codecs": [{"name": "jpeg", "settings": [5]}],
        "tasks": [{"name": "detect", "model": "builtin:tiny-detr", "threshold": 0.0}],
    })
    out = str(tmp_path / "out")
    run_job(job, out, engine="serial", progress=False)
    df = read_results(out)
    assert df.height == 4 and df["error"].is_null().all()
    assert df["pipeline_check"].str.contains("tiny random DETR").all()
    assert df["det_boxes"].list.len().eq(8).all()
    base = df.filter(pl.col("codec") == "none").sort("sample_id")
    assert base["gt_labels"].to_list() == [["dog", "cat"], []]
    summary = summarize(df)
    got = summary.filter(pl.col("codec") == "none").row(0, named=True)
    assert got["mAP"] == pytest.approx(coco_eval(base.select("gt_boxes", "gt_labels", "det_boxes", "det_scores", "det_labels").to_dicts())[0])
    coded = df.filter(pl.col("codec") == "jpeg")["agreement"]
    assert coded.is_not_null().all() and coded.is_between(0, 1).all()


def test_boxes_of_an_exif_rotated_image_are_refused(tmp_path):
    """Boxes are drawn on the stored pixels, and mpq makes the image upright: they would not match."""
    import io

    import datasets
    import PIL.Image

    exif = PIL.Image.Exif()
    exif[0x0112] = 6
    buf = io.BytesIO()
    PIL.Image.fromarray(photo(40, 56)).save(buf, format="PNG", exif=exif)
    feats = datasets.Features({"image": datasets.Image(), "objects": {
        "bbox": datasets.List(datasets.List(datasets.Value("float32"), length=4)), "category": datasets.List(datasets.Value("string"))}})
    (tmp_path / "rot" / "data").mkdir(parents=True)
    datasets.Dataset.from_dict({"image": [{"bytes": buf.getvalue(), "path": None}], "objects": [{"bbox": [[1, 2, 3, 4]], "category": ["cat"]}]},
                               features=feats).to_parquet(tmp_path / "rot" / "data" / "validation-00000-of-00001.parquet")
    hf = registry.get("source", "hf")
    with pytest.raises(Exception, match="EXIF orientation 6: its boxes"):
        hf(hf.Options(hf=str(tmp_path / "rot"), boxes="objects")).load("0")


def test_the_bootstrap_scores_resamples_by_coco_evaluation():
    """mAP is no sum of row parts: each resample (drawn samples repeated as separate images) is evaluated by ``aggregate``."""
    from mpq.analysis.paired import joint_bootstrap
    from mpq.analysis.sums import resample_counts

    samples = random_samples(2)
    rows = pl.DataFrame([s | {"sample_id": str(i), "_c": c, "task_type": "detect", "error": None, "agreement": 1.0}
                         for c in ("a", "b") for i, s in enumerate(samples if c == "a" else samples[::-1])])
    point, boot = joint_bootstrap(rows, n_resamples=4)
    assert point["a"]["mAP"] == pytest.approx(coco_eval(samples)[0])
    counts = resample_counts(len(samples), 4, 0)  # the same draw, over ids "0".."5" in order
    drawn = [s for s, k in zip(samples, counts[0]) for _ in range(int(k))]
    assert boot["a"]["mAP"][0] == pytest.approx(coco_eval(drawn)[0])
