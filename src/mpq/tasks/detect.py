"""Object detection with any ``AutoModelForObjectDetection`` (DETR, RT-DETR, Conditional DETR).

Per sample: the image processor's ``post_process_object_detection`` gives boxes in the
image's pixels (x0, y0, x1, y1), scores and class names. COCO's mAP is not a sum of
per-sample parts, so each row keeps its detections and its ground-truth boxes as list
columns, and ``aggregate`` rebuilds a COCO ground truth and result set from a split's rows
and runs pycocotools' ``COCOeval`` on them (Lin et al., "Microsoft COCO: Common Objects in
Context", ECCV 2014): mAP@[.5:.95] and mAP@.5, up to 100 detections per image.
Classes are matched by name, so the dataset's class ids need not be the model's.
"""

from __future__ import annotations

import contextlib
import io
from typing import Any

import numpy as np
import pyarrow as pa
from pydantic import Field, field_validator

from mpq.components import Options, Task, mean_agreement
from mpq.hub import PROCESSOR_FILES, HubModel, builtin_model, known_builtin, load_processor_and_model
from mpq.media import Image
from mpq.registry import register

TINY_DETR = "builtin:tiny-detr"
SAMPLE = ["gt_boxes", "gt_labels", "det_boxes", "det_scores", "det_labels"]  # what COCO evaluation reads of a row
BOXES = pa.list_(pa.list_(pa.float64()))  # per box: x0, y0, x1, y1 in the image's pixels


class DetectOptions(Options):
    model: str = "facebook/detr-resnet-50"
    revision: str | None = None
    # Detections kept for mAP: COCO evaluation wants low-scoring ones too (precision over all recalls).
    threshold: float = Field(default=0.05, ge=0, le=1)
    # Detections that count for `agreement`: the confident ones a user of the detector would act on.
    agreement_threshold: float = Field(default=0.5, ge=0, le=1)

    @field_validator("model")
    @classmethod
    def _known_builtin(cls, model: str) -> str:
        return known_builtin(model, (TINY_DETR,))


def tiny_detr() -> str:
    """A tiny randomly initialised DETR (ResNet backbone of its own, nothing downloaded), written
    once in HF format to mpq's cache, so a pipeline check runs offline through the real
    ``from_pretrained`` path; its detections are random and its mAP means nothing."""
    from transformers import DetrConfig, DetrForObjectDetection, DetrImageProcessor, ResNetConfig

    labels = ["cat", "dog"]
    config = DetrConfig(
        use_timm_backbone=False, use_pretrained_backbone=False,
        backbone_config=ResNetConfig(embedding_size=8, hidden_sizes=[8, 8, 16, 16], depths=[1, 1, 1, 1], out_features=["stage4"]),
        d_model=16, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2, decoder_attention_heads=2,
        encoder_ffn_dim=16, decoder_ffn_dim=16, num_queries=8,
        id2label=dict(enumerate(labels)), label2id={n: i for i, n in enumerate(labels)},
    )
    return builtin_model("tiny-detr-random", lambda: (DetrForObjectDetection(config), DetrImageProcessor(size={"shortest_edge": 32, "longest_edge": 64})))


def coco_eval(samples: list[dict[str, Any]]) -> tuple[float | None, float | None]:
    """(mAP@[.5:.95], mAP@.5) of pycocotools' COCOeval over samples, each a dict with
    ``gt_boxes``/``gt_labels`` and ``det_boxes``/``det_scores``/``det_labels`` (boxes x0, y0, x1, y1);
    None where no sample has a ground-truth box."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    names = sorted({n for s in samples for n in (s["gt_labels"] or [])} | {n for s in samples for n in (s["det_labels"] or [])})
    cat = {n: i + 1 for i, n in enumerate(names)}

    def xywh(b):
        return [b[0], b[1], b[2] - b[0], b[3] - b[1]]

    gt = {"images": [{"id": i + 1} for i in range(len(samples))], "categories": [{"id": c, "name": n} for n, c in cat.items()],
          "annotations": []}
    dets = []
    for i, s in enumerate(samples):
        for b, n in zip(s["gt_boxes"] or [], s["gt_labels"] or []):
            box = xywh(b)
            gt["annotations"].append({"id": len(gt["annotations"]) + 1, "image_id": i + 1, "category_id": cat[n], "bbox": box,
                                      "area": box[2] * box[3], "iscrowd": 0})
        for b, score, n in zip(s["det_boxes"] or [], s["det_scores"] or [], s["det_labels"] or []):
            dets.append({"image_id": i + 1, "category_id": cat[n], "bbox": xywh(b), "score": score})
    if not gt["annotations"]:
        return None, None
    if not dets:
        return 0.0, 0.0
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress
        coco = COCO()
        coco.dataset = gt
        coco.createIndex()
        ev = COCOeval(coco, coco.loadRes(dets), "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return float(ev.stats[0]), float(ev.stats[1])


def iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise IoU of boxes a (n, 4) and b (m, 4), x0, y0, x1, y1."""
    lo, hi = np.maximum(a[:, None, :2], b[None, :, :2]), np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(hi - lo, 0, None), axis=2)
    area = lambda x: np.prod(np.clip(x[:, 2:] - x[:, :2], 0, None), axis=1)  # noqa: E731
    union = area(a)[:, None] + area(b)[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def matched_f1(boxes, labels, scores, ref_boxes, ref_labels, threshold: float = 0.5) -> float:
    """F1 of detections against reference boxes taken as ground truth: detections, highest
    score first, each match the unmatched reference box of the same class with the highest
    IoU ≥ ``threshold`` (COCO's greedy matching); 2·matched / (detections + references), 1 when both are empty."""
    if not len(boxes) and not len(ref_boxes):
        return 1.0
    if not len(boxes) or not len(ref_boxes):
        return 0.0
    overlap = iou(np.asarray(boxes, float), np.asarray(ref_boxes, float))
    taken, matched = np.zeros(len(ref_boxes), bool), 0
    for i in np.argsort(-np.asarray(scores), kind="stable"):
        ok = (overlap[i] >= threshold) & ~taken & (np.asarray(ref_labels) == labels[i])
        if ok.any():
            taken[np.argmax(np.where(ok, overlap[i], -1))] = True
            matched += 1
    return 2 * matched / (len(boxes) + len(ref_boxes))


@register("task", "detect")
class Detect(Task):
    """Object detection: per-sample detections and ground-truth boxes, split-level COCO mAP."""

    Options = DetectOptions
    columns = {
        "score": pa.float64(),  # this sample's own mAP@[.5:.95]
        "det_boxes": BOXES,
        "det_scores": pa.list_(pa.float64()),
        "det_labels": pa.list_(pa.string()),
        "gt_boxes": BOXES,
        "gt_labels": pa.list_(pa.string()),
    }

    def assets(self):
        if self.options.model == TINY_DETR:
            return []  # written by mpq itself, offline
        return [HubModel(self.options.model, self.options.revision, ("AutoImageProcessor", "AutoModelForObjectDetection"),
                         files=(PROCESSOR_FILES,))]

    def load(self) -> None:
        from transformers import AutoImageProcessor, AutoModelForObjectDetection

        model_id = self.options.model
        if model_id == TINY_DETR:
            model_id = tiny_detr()
            self.pipeline_check = "tiny random DETR: detections and mAP mean nothing"
        load_processor_and_model(self, AutoImageProcessor, AutoModelForObjectDetection, model_id)
        self.names = self.model.config.id2label

    def predict(self, media: list[Image], targets: list[Any]) -> list[dict[str, Any]]:
        import torch

        for target in targets:
            if target is not None and not (isinstance(target, dict) and "boxes" in target):
                raise ValueError(f"detect scores boxes, not a {type(target).__name__} target: give the hf source `boxes: COLUMN`")
        inputs = self.processor(images=[m.pixels for m in media], return_tensors="pt", input_data_format="channels_last")
        inputs = {k: v.to(self.device, dtype=self.dtype) if v.is_floating_point() else v.to(self.device) for k, v in inputs.items()}
        with torch.inference_mode():
            outputs = self.model(**inputs)
        outputs.logits, outputs.pred_boxes = outputs.logits.float(), outputs.pred_boxes.float()
        found = self.processor.post_process_object_detection(outputs, threshold=self.options.threshold,
                                                             target_sizes=[(m.height, m.width) for m in media])
        rows = []
        for target, det in zip(targets, found):
            row = {"label": None, "prediction": None, "correct": None, "score": None,
                   "det_boxes": det["boxes"].cpu().double().tolist(), "det_scores": det["scores"].cpu().double().tolist(),
                   "det_labels": [str(self.names[int(k)]) for k in det["labels"].cpu()]}
            if target is not None:
                row |= {"gt_boxes": [list(map(float, b)) for b in target["boxes"]], "gt_labels": list(target["labels"])}
                row["score"] = coco_eval([row])[0]
            rows.append(row)
        return rows

    def confident(self, row):
        keep = [i for i, s in enumerate(row["det_scores"]) if s >= self.options.agreement_threshold]
        return [row["det_boxes"][i] for i in keep], [row["det_labels"][i] for i in keep], [row["det_scores"][i] for i in keep]

    def agreement(self, output, reference):
        """F1 of the coded input's confident detections against the uncompressed input's taken as
        ground truth (same class, IoU ≥ 0.5): in [0, 1] already, so it is its own distance."""
        boxes, labels, scores = self.confident(output)
        ref_boxes, ref_labels, _ = self.confident(reference)
        return {"agreement": matched_f1(boxes, labels, scores, ref_boxes, ref_labels)}

    @classmethod
    def aggregate(cls, rows):
        """COCO mAP@[.5:.95] and mAP@.5 of the split's rows evaluated together; the mean agreement.
        AP ranks detections over the whole split, so it is no sum of per-row parts (no ``sums``):
        resamples are scored by this method itself."""
        import polars as pl

        scored = rows.filter(pl.col("gt_boxes").is_not_null()) if "gt_boxes" in rows.columns else rows.clear()
        ap, ap50 = coco_eval(scored.select(SAMPLE).to_dicts()) if scored.height else (None, None)
        return {"mAP": ap, "mAP50": ap50} | mean_agreement(rows)
