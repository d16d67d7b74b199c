"""Datasets from the Hugging Face hub (or its local cache) through ``datasets.load_dataset``.

Sample ids are row indices in the split, so listing them is cheap once the split is
cached and any sample can be loaded on any worker. Images and audio are read as raw bytes
(``decode=False``) and decoded by mpq (Pillow; libsndfile or FFmpeg), so a corrupt file
becomes an ``error`` row instead of killing the run, and no torchcodec is needed. A
dataset with an ``audio`` column is an audio dataset; its ``label`` column is the target
(e.g. the transcript). A ``boxes`` column (objects: lists of ``bbox`` and ``category``, as
the hub's object-detection datasets hold them) makes the target a dict of boxes (x0, y0, x1, y1)
and class names, for detection.
"""

from __future__ import annotations

import functools
from typing import Any, Literal

from pydantic import Field, model_validator

from mpq.components import Asset, ClassTarget, Options, Sample, Source, offline_hint
from mpq.media import (
    MediaError,
    audio_from_array,
    audio_from_bytes,
    image_from_array,
    image_from_bytes,
    label_map_from_bytes,
    oriented,
    to_rgb,
)
from mpq.registry import register


class HFOptions(Options):
    hf: str = Field(description="a hub dataset id or a local folder in the hub's layout")
    config: str | None = Field(default=None, description="the dataset's configuration (subset)")
    split: str = "validation"
    revision: str | None = Field(default=None, description="a hub branch, tag or commit")
    image: str = Field(default="image", description="the image column")
    audio: str | None = Field(default=None, description="an audio column: makes this an audio dataset (image is then unused)")
    label: str | None = Field(default="label", description="the target column: class labels, or transcripts for audio")
    label_map: str | None = Field(default=None, description="a column of annotation images (a class index per pixel): the target instead of label, for segmentation")
    boxes: str | None = Field(default=None, description="a column of objects, each with `bbox` and `category` lists: the target instead of label, for detection")
    box_format: Literal["xyxy", "xywh"] = Field(default="xyxy", description="the boxes' layout: corners (x0, y0, x1, y1) or COCO's (x, y, width, height)")

    @model_validator(mode="before")
    @classmethod
    def _label_map_replaces_label(cls, data: Any) -> Any:
        if isinstance(data, dict) and (data.get("label_map") or data.get("boxes")):
            given = [k for k in ("label", "label_map", "boxes") if data.get(k)]
            if len(given) > 1:
                raise ValueError("give either `label` (a class column), `label_map` (a column of label images) or `boxes` (a column of objects), "
                                 f"not {' and '.join(given)}")
            data = {**data, "label": None}
        return data


@functools.cache
def open_split(hf: str, config: str | None, split: str, revision: str | None):
    import datasets

    try:
        return datasets.load_dataset(hf, config, split=split, revision=revision)
    except (ConnectionError, OSError, datasets.exceptions.DatasetNotFoundError) as exc:
        raise offline_hint("dataset", hf, exc) from exc


@register("source", "hf")
class HFSource(Source):
    """A Hugging Face dataset split (hub id or local folder): an image or audio column and a label column."""

    Options = HFOptions

    def __init__(self, options=None):
        super().__init__(options)
        self.modality = "audio" if self.options.audio else "image"
        self.column = self.options.audio or self.options.image

    def _split(self):
        o = self.options
        ds = open_split(o.hf, o.config, o.split, o.revision)
        import datasets

        for column in (self.column, o.label_map):
            feature = ds.features.get(column) if column else None
            if isinstance(feature, datasets.Image):
                ds = ds.cast_column(column, datasets.Image(decode=False))
            elif isinstance(feature, datasets.Audio):
                ds = ds.cast_column(column, datasets.Audio(decode=False))
        return ds

    def ids(self) -> list[str]:
        return self.id_range(0, self.count())

    def count(self) -> int:
        ds = self._split()
        o = self.options
        missing = [c for c in (self.column, o.label, o.label_map, o.boxes) if c and c not in ds.column_names]
        if missing:
            raise ValueError(f"dataset {self.options.hf!r} has no column(s) {missing}; columns: {ds.column_names}")
        return len(ds)

    def id_range(self, start: int, stop: int) -> list[str]:
        return [str(i) for i in range(start, min(stop, len(self._split())))]

    def load(self, sample_id: str) -> Sample:
        ds = self._split()
        row = ds[int(sample_id)]
        if self.modality == "audio":
            audio = _audio(row[self.column])
            return Sample(sample_id, audio, target=self._label(ds, row))
        img = _image(row[self.column])
        if self.options.label_map:
            target = oriented(_label_map(row[self.options.label_map]), img.orientation)
            if target.shape != (img.height, img.width):
                raise MediaError(f"label map is {target.shape[1]}×{target.shape[0]}, image {img.width}×{img.height}")
        elif self.options.boxes:
            if img.orientation not in (None, 1):  # boxes are drawn on the stored pixels; mpq makes images upright
                raise MediaError(f"image has EXIF orientation {img.orientation}: its boxes would not match the upright image")
            target = self._boxes(ds, row[self.options.boxes])
        else:
            target = self._label(ds, row)
        return Sample(sample_id, img, target=target)

    def _boxes(self, ds, objects: dict[str, list]) -> dict[str, list]:
        """Boxes as x0, y0, x1, y1 and their class names (from the dataset's ClassLabel, else as given)."""
        feature = ds.features[self.options.boxes]
        category = feature.get("category") if isinstance(feature, dict) else getattr(feature, "feature", {}).get("category")
        if hasattr(category, "feature"):  # a Sequence / List of ClassLabel
            category = category.feature
        if isinstance(objects, list):  # a list of objects rather than a dict of lists
            objects = {"bbox": [o["bbox"] for o in objects], "category": [o["category"] for o in objects]}
        boxes = [list(map(float, b)) for b in objects["bbox"]]
        if self.options.box_format == "xywh":
            boxes = [[x, y, x + w, y + h] for x, y, w, h in boxes]
        names = [category.int2str(int(c)) if hasattr(category, "int2str") else str(c) for c in objects["category"]]
        return {"boxes": boxes, "labels": names}

    def _label(self, ds, row: dict[str, Any]) -> Any:
        name = self.options.label
        if not name:
            return None
        value = row[name]
        feature = ds.features[name]
        if hasattr(feature, "int2str"):  # a ClassLabel: the id travels with the name
            return ClassTarget(feature.int2str(value), int(value))
        return value

    def classes(self) -> list[ClassTarget] | None:
        name = self.options.label
        if self.modality != "image" or not name:
            return None
        ds = self._split()
        feature = ds.features.get(name)
        if hasattr(feature, "names"):
            return [ClassTarget(n, i) for i, n in enumerate(feature.names)]
        return [ClassTarget(str(v)) for v in sorted(map(str, ds.unique(name)))]

    def describe(self) -> str:
        o = self.options
        return f"hf:{o.hf}/{o.config or 'default'}/{o.split}" + (f"@{o.revision}" if o.revision else "")

    def assets(self) -> list[Asset]:
        return [HubDataset(self.options)]


class HubDataset(Asset):
    """A split of a hub dataset, downloaded and prepared by ``load_dataset`` in its cache."""

    kind = "dataset"

    def __init__(self, options: HFOptions):
        super().__init__(options.hf)
        self.args = (options.hf, options.config, options.split, options.revision)

    @property
    def key(self) -> tuple:
        return ("dataset", *self.args)

    def fetch(self) -> None:
        open_split(*self.args)

    def check(self) -> None:
        # Offline, load_dataset reads the prepared split from the cache (memory-mapped: cheap);
        # the plan reuses the opened split.
        open_split(*self.args)


def _image(value: Any):
    if isinstance(value, dict):  # datasets.Image(decode=False): {"bytes": ..., "path": ...}
        if value.get("bytes") is not None:
            return image_from_bytes(value["bytes"])
        with open(value["path"], "rb") as f:
            return image_from_bytes(f.read())
    if hasattr(value, "mode"):  # an already decoded PIL image
        return to_rgb(value)
    return image_from_array(value)


def _label_map(value: Any):
    if isinstance(value, dict):
        if value.get("bytes") is not None:
            return label_map_from_bytes(value["bytes"])
        with open(value["path"], "rb") as f:
            return label_map_from_bytes(f.read())
    import numpy as np

    return np.asarray(value)


def _audio(value: Any):
    if isinstance(value, dict) and "array" in value:  # already decoded: {"array", "sampling_rate"}
        return audio_from_array(value["array"], value["sampling_rate"])
    if isinstance(value, dict):  # datasets.Audio(decode=False): {"bytes": ..., "path": ...}
        if value.get("bytes") is not None:
            return audio_from_bytes(value["bytes"])
        with open(value["path"], "rb") as f:
            return audio_from_bytes(f.read())
    raise TypeError(f"unsupported audio value of type {type(value).__name__}")
