"""Semantic segmentation with any ``AutoModelForSemanticSegmentation`` (e.g. SegFormer).

Per sample: the logits are upsampled (bilinear) to the label map's size and arg-maxed; the
label map itself is never resized. Each row keeps, per class, the pixel counts of the
intersection and union of prediction and label (pixels labelled ``ignore_index`` left
out), plus correct and valid pixel counts, so that the split-level mIoU can be computed
the way ADE20k defines it: intersections and unions summed over the whole split, IoU per
class, then the mean over classes that occur (in labels or predictions) at all.

All of it (preprocessing, upsampling, arg-max, counting) runs on the model's device and is
read back once per batch: the counts are integers, so they are the same wherever counted.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa

from mpq.components import Options, Task, agreement_from_sums, agreement_sums, column_sums, mean_agreement, ratio
from mpq.hub import PROCESSOR_FILES, HubModel, load_processor_and_model, processor_images, to_device
from mpq.media import Image
from mpq.registry import register


class SegmentOptions(Options):
    model: str = "nvidia/segformer-b0-finetuned-ade-512-512"
    revision: str | None = None
    # Shift labels down by one, making 0 ("other") the ignored class, as ADE20k-trained
    # models expect. None: follow the model's image processor (`do_reduce_labels`).
    reduce_labels: bool | None = None
    ignore_index: int = 255


def reduce_labels(label, ignore_index: int = 255):
    """0 → ignored, k → k − 1 (the ADE20k convention; ``do_reduce_labels`` in transformers).
    A NumPy array or a torch tensor (left on its device) in, an int64 tensor out."""
    import torch

    label = torch.as_tensor(label).long()
    return (label - 1).masked_fill((label == 0) | (label == ignore_index), ignore_index)


def check_classes(low: int, high: int, num_classes: int, ignore_index: int) -> None:
    """Refuse a label map whose valid pixels (lowest and highest label given) leave [0, num_classes)."""
    if low < 0 or high >= num_classes:
        bad = high if high >= num_classes else low
        raise ValueError(f"label map holds class {bad} (after reduce_labels, if on), outside the model's {num_classes} classes "
                         f"[0, {num_classes}) and not ignore_index {ignore_index}: check the task's `reduce_labels`")


def iou_counts(pred: np.ndarray, label: np.ndarray, num_classes: int, ignore_index: int = 255) -> dict[str, Any]:
    """Per-class intersection and union pixel counts and the pixel accuracy counts of one map."""
    if pred.shape != label.shape:
        raise ValueError(f"prediction {pred.shape} and label map {label.shape} differ in size")
    valid = label != ignore_index
    p, t = pred[valid].astype(np.int64), label[valid].astype(np.int64)
    if t.size:
        check_classes(int(t.min()), int(t.max()), num_classes, ignore_index)
    area_pred = np.bincount(p, minlength=num_classes)
    area_label = np.bincount(t, minlength=num_classes)
    intersection = np.bincount(p[p == t], minlength=num_classes)
    union = area_pred + area_label - intersection
    return {
        "intersection": intersection.tolist(),
        "union": union.tolist(),
        "pixels_correct": int((p == t).sum()),
        "pixels_valid": int(valid.sum()),
    }


def device_counts(pred, label, num_classes: int, ignore_index: int = 255):
    """``iou_counts``' numbers of one map, counted where its tensors are, without waiting for
    them (no sync on a GPU): one int64 tensor [intersection (C), union (C), pixels correct,
    pixels valid, lowest and highest valid label], for ``counts_row`` after the read-back."""
    import torch

    pred, label = pred.long(), label.long()
    valid = label != ignore_index
    ok = valid & (label >= 0) & (label < num_classes)  # out-of-range labels are refused after the read-back
    pairs = torch.where(ok, label * num_classes + pred, 0).flatten()
    confusion = torch.zeros(num_classes * num_classes, dtype=torch.int64, device=pred.device)
    confusion = confusion.scatter_add_(0, pairs, ok.flatten().long()).view(num_classes, num_classes)  # [label, pred]
    intersection = confusion.diagonal()
    union = confusion.sum(0) + confusion.sum(1) - intersection
    big = torch.iinfo(torch.int64).max
    low, high = torch.where(valid, label, big).min(), torch.where(valid, label, -big).max()
    return torch.cat([intersection, union, torch.stack([intersection.sum(), valid.sum(), low, high])])


def counts_row(counts: np.ndarray, num_classes: int, ignore_index: int = 255) -> dict[str, Any]:
    """``device_counts``' tensor, read back, as ``iou_counts``' dict (refusing out-of-range labels as it does)."""
    correct, valid, low, high = (int(x) for x in counts[2 * num_classes :])
    if valid:
        check_classes(low, high, num_classes, ignore_index)
    return {
        "intersection": counts[:num_classes].tolist(),
        "union": counts[num_classes : 2 * num_classes].tolist(),
        "pixels_correct": correct,
        "pixels_valid": valid,
    }


def _class_counts(column, dtype) -> np.ndarray:
    """(rows, classes) from a list column of per-class counts, a row of zeros where one is
    null: the flat values straight into NumPy (no Python list per row)."""
    present = column.is_not_null().to_numpy()
    width = column.list.len().drop_nulls()
    if width.n_unique() > 1:
        raise ValueError(f"{column.name}: rows count different numbers of classes ({width.min()} to {width.max()})")
    out = np.zeros((len(column), width[0] if len(width) else 0), dtype=dtype)
    out[present] = column.drop_nulls().explode().to_numpy().astype(dtype).reshape(-1, out.shape[1])
    return out


def mean_iou(intersection: np.ndarray, union: np.ndarray) -> float | None:
    """Mean over classes of intersection / union, classes with an empty union left out."""
    present = union > 0
    return float(np.mean(intersection[present] / union[present])) if present.any() else None


@register("task", "segment")
class Segment(Task):
    """Semantic segmentation: per-sample intersection/union counts, split-level mIoU."""

    Options = SegmentOptions
    columns = {
        "score": pa.float64(),  # this sample's own mIoU (classes present in it)
        "pixel_accuracy": pa.float64(),
        "pixels_correct": pa.int64(),
        "pixels_valid": pa.int64(),
        "intersection": pa.list_(pa.int64()),  # per class, indexed like the model's id2label
        "union": pa.list_(pa.int64()),
        "reduce_labels": pa.bool_(),  # the value used: from the job, else the model's image processor
    }

    def assets(self):
        return [HubModel(self.options.model, self.options.revision, ("AutoImageProcessor", "AutoModelForSemanticSegmentation"),
                         files=(PROCESSOR_FILES,))]

    def load(self) -> None:
        import torch
        from transformers import AutoImageProcessor, AutoModelForSemanticSegmentation

        load_processor_and_model(self, AutoImageProcessor, AutoModelForSemanticSegmentation, self.options.model)
        self.num_classes = self.model.config.num_labels
        reduce = self.options.reduce_labels
        # transformers 5 keeps the hub's older key `reduce_labels` (nvidia's ADE20k configs) as a plain
        # attribute and leaves do_reduce_labels False: honour either.
        from_config = getattr(self.processor, "do_reduce_labels", False) or getattr(self.processor, "reduce_labels", False)
        self.reduce = bool(from_config) if reduce is None else reduce
        self.pred_dtype = torch.int16 if self.num_classes <= 2**15 else torch.int64  # a quarter of the read-back

    def predict(self, media: list[Image], targets: list[Any]) -> list[dict[str, Any]]:
        import torch
        import torch.nn.functional as F

        for image, target in zip(media, targets):
            if target is not None and tuple(target.shape) != (image.height, image.width):
                raise ValueError(f"prediction {(image.height, image.width)} and label map {target.shape} differ in size")
        # All work stays on the model's device, queued without a sync, until one read-back per
        # batch; images and label maps go there first (a blocking copy waits for the GPU).
        images = processor_images(self.processor, [m.pixels for m in media], self.device)
        labels = iter(to_device([t for t in targets if t is not None], self.device))
        inputs = self.processor(images=images, return_tensors="pt", device=self.device, input_data_format="channels_last")
        ignore = self.options.ignore_index
        with torch.inference_mode():
            logits = self.model(pixel_values=inputs["pixel_values"].to(self.device, dtype=self.dtype)).logits
            preds, counts = [], []
            for image, target, lg in zip(media, targets, logits):
                # One sample at a time: full-size logits of a whole batch can be large.
                up = F.interpolate(lg[None].float(), size=(image.height, image.width), mode="bilinear", align_corners=False)
                pred = up[0].argmax(0)
                preds.append(pred.flatten().to(self.pred_dtype))
                if target is not None:  # without a label map only `agreement` is scored
                    label = next(labels)
                    counts.append(device_counts(pred, reduce_labels(label, ignore) if self.reduce else label, self.num_classes, ignore))
            flat = torch.cat(preds).cpu().numpy()
            counts = iter(torch.stack(counts).cpu().numpy() if counts else [])
        rows, offset = [], 0
        for image, target in zip(media, targets):
            h, w = image.height, image.width
            pred, offset = flat[offset : offset + h * w].reshape(h, w), offset + h * w
            row = {"label": None, "prediction": None, "correct": None, "score": None, "_pred": pred, "reduce_labels": self.reduce}
            if target is not None:
                c = counts_row(next(counts), self.num_classes, ignore)
                valid = c["pixels_valid"]
                row.update(
                    c, score=mean_iou(np.array(c["intersection"]), np.array(c["union"])),
                    pixel_accuracy=c["pixels_correct"] / valid if valid else None,
                )
            rows.append(row)
        return rows

    def agreement(self, output, reference):
        """mIoU of this prediction against the prediction on the uncompressed input: in [0, 1]
        already, so it is its own distance (no column of its own)."""
        counts = iou_counts(output["_pred"], reference["_pred"], self.num_classes, ignore_index=-1)
        return {"agreement": mean_iou(np.array(counts["intersection"]), np.array(counts["union"]))}

    @classmethod
    def aggregate(cls, rows):
        """Dataset-level mIoU (counts summed over the split first) and pixel accuracy; the mean agreement."""
        import polars as pl

        rows_ = rows.filter(pl.col("intersection").is_not_null())
        if rows_.is_empty():
            return {"mIoU": None, "pixel_accuracy": None} | mean_agreement(rows)
        return cls.label_scores(rows_) | mean_agreement(rows)

    @classmethod
    def sums(cls, rows):
        counted = rows["intersection"].is_not_null().to_numpy() if "intersection" in rows.columns else np.zeros(rows.height, bool)

        def counts(column):  # per-class counts, a row of zeros where a row has none
            if not counted.any():
                return np.zeros((rows.height, 1))
            return _class_counts(rows[column], float)

        return {"intersection": counts("intersection"), "union": counts("union"), "counted": counted.astype(float),
                "pixels_correct": column_sums(rows, "pixels_correct", counted)[0],
                "pixels_valid": column_sums(rows, "pixels_valid", counted)[0]} | agreement_sums(rows)

    @classmethod
    def from_sums(cls, sums):
        union = sums["union"]
        present = union > 0
        with np.errstate(invalid="ignore", divide="ignore"):
            per_class = np.where(present, sums["intersection"] / np.where(present, union, 1), 0.0)
            miou = np.where(present.any(-1), per_class.sum(-1) / present.sum(-1), np.nan)
        has = sums["counted"] > 0
        return {"mIoU": np.where(has, miou, np.nan),
                "pixel_accuracy": np.where(has, ratio(sums["pixels_correct"], sums["pixels_valid"]), np.nan)} | agreement_from_sums(sums)

    @staticmethod
    def label_scores(rows):
        intersection = _class_counts(rows["intersection"], np.int64).sum(0)
        union = _class_counts(rows["union"], np.int64).sum(0)
        valid = rows["pixels_valid"].sum()
        return {
            "mIoU": mean_iou(intersection, union),
            "pixel_accuracy": rows["pixels_correct"].sum() / valid if valid else None,
        }
