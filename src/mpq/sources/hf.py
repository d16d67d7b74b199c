"""Datasets from the Hugging Face hub (or its local cache) through ``datasets.load_dataset``.

Sample ids are row indices in the split, so listing them is cheap once the split is
cached and any sample can be loaded on any worker. Images are read as raw bytes and
decoded by mpq, so a corrupt file becomes an ``error`` row instead of killing the run.
"""

from __future__ import annotations

import functools
from typing import Any

# AssetUnavailable and offline_hint are also imported from here by components' loaders.
from mpq.components import Asset, AssetUnavailable, Options, Sample, Source, offline_hint  # noqa: F401
from mpq.media import image_from_array, image_from_bytes, to_rgb
from mpq.registry import register


class HFOptions(Options):
    hf: str
    config: str | None = None
    split: str = "validation"
    revision: str | None = None
    image: str = "image"
    label: str | None = "label"


@functools.cache
def open_split(hf: str, config: str | None, split: str, revision: str | None):
    import datasets

    try:
        return datasets.load_dataset(hf, config, split=split, revision=revision)
    except (ConnectionError, OSError, datasets.exceptions.DatasetNotFoundError) as exc:
        raise offline_hint("dataset", hf, exc) from exc


@register("source", "hf")
class HFSource(Source):
    Options = HFOptions

    def _split(self):
        o = self.options
        ds = open_split(o.hf, o.config, o.split, o.revision)
        import datasets

        if isinstance(ds.features.get(o.image), datasets.Image):
            ds = ds.cast_column(o.image, datasets.Image(decode=False))
        return ds

    def ids(self) -> list[str]:
        ds = self._split()
        missing = [c for c in (self.options.image, self.options.label) if c and c not in ds.column_names]
        if missing:
            raise ValueError(f"dataset {self.options.hf!r} has no column(s) {missing}; columns: {ds.column_names}")
        return [str(i) for i in range(len(ds))]

    def load(self, sample_id: str) -> Sample:
        ds = self._split()
        row = ds[int(sample_id)]
        img = _image(row[self.options.image])
        return Sample(sample_id, img.pixels, target=self._label(ds, row), conversion=img.conversion)

    def _label(self, ds, row: dict[str, Any]) -> Any:
        name = self.options.label
        if not name:
            return None
        value = row[name]
        feature = ds.features[name]
        return feature.int2str(value) if hasattr(feature, "int2str") else value

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
