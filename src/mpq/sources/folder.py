"""Images from a local folder (recursively). The label is the name of the file's parent
folder when ``labels: parent`` (the ImageFolder convention), else none."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from mpq.components import Options, Sample, Source
from mpq.media import image_from_bytes
from mpq.registry import register

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff", ".gif", ".ppm", ".pgm"}


class FolderOptions(Options):
    folder: str
    labels: Literal["parent", "none"] = "none"


@register("source", "folder")
class FolderSource(Source):
    Options = FolderOptions

    @property
    def root(self) -> Path:
        return Path(self.options.folder).expanduser()

    def ids(self) -> list[str]:
        if not self.root.is_dir():
            raise FileNotFoundError(f"dataset folder {str(self.root)!r} does not exist")
        files = sorted(p for p in self.root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        return [p.relative_to(self.root).as_posix() for p in files]

    def load(self, sample_id: str) -> Sample:
        path = self.root / sample_id
        img = image_from_bytes(path.read_bytes())
        target = path.parent.name if self.options.labels == "parent" else None
        return Sample(sample_id, img.pixels, target=target, conversion=img.conversion)

    def describe(self) -> str:
        return f"folder:{self.root.resolve()}"
