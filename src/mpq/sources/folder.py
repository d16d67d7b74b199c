"""Images or audio files from a local folder (recursively).

Images: the label is the name of the file's parent folder when ``labels: parent`` (the
ImageFolder convention), else none. ``class_map`` renames those labels to a model's class names
(``{cat: tabby cat}``, or a YAML mapping or two-column CSV file of them); a label it does not
name stays as it is. Audio (``media: audio``; WAV, FLAC, OGG, MP3, M4A, ...
decoded by libsndfile or FFmpeg): with ``labels: text`` the target is the text of the
file of the same name ending in ``.txt`` (e.g. a transcript), if there is one.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from mpq.components import ClassTarget, Options, Sample, Source
from mpq.media import audio_from_bytes, image_from_bytes
from mpq.registry import register

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff", ".gif", ".ppm", ".pgm"}
AUDIO_SUFFIXES = {".wav", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".m4a", ".aac", ".aif", ".aiff", ".au", ".webm"}


class FolderOptions(Options):
    folder: str = Field(description="the folder, searched recursively")
    media: Literal["image", "audio"] = "image"
    labels: Literal["parent", "text", "none"] = Field(
        default="none", description="parent: the parent folder's name; text: NAME.txt beside each file; none: agreement only")
    class_map: dict[str, str] | str | None = Field(
        default=None, description="folder label -> model class name: a mapping, or a YAML (mapping) or CSV (two columns) file")

    @field_validator("class_map")
    @classmethod
    def _read_class_map(cls, value: dict[str, str] | str | None) -> dict[str, str] | None:
        """A file is read here, so that a missing or malformed one is refused with the job's checks."""
        if not isinstance(value, str):
            return value
        path = Path(value).expanduser()
        try:
            text = path.read_text()
        except OSError as exc:
            raise ValueError(f"cannot read {str(path)!r}: {exc.strerror}") from None
        if path.suffix.lower() == ".csv":
            rows = [r for r in csv.reader(text.splitlines()) if r and not r[0].startswith("#")]
            if any(len(r) != 2 for r in rows):
                raise ValueError(f"{str(path)!r}: each line must be `folder label,class name`")
            return {label.strip(): name.strip() for label, name in rows}
        import yaml

        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ValueError(f"{str(path)!r} is not valid YAML: {' '.join(str(exc).split())}") from None
        if not isinstance(data, dict) or not all(isinstance(v, (str, int)) for v in data.values()):
            raise ValueError(f"{str(path)!r} must map each folder label to a class name")
        return {str(k): str(v) for k, v in data.items()}

    @model_validator(mode="after")
    def _class_map_needs_labels(self) -> "FolderOptions":
        if self.class_map and (self.media != "image" or self.labels != "parent"):
            raise ValueError("class_map renames the labels of images in class folders: it needs `labels: parent`")
        return self


@register("source", "folder")
class FolderSource(Source):
    """A local folder of images (labels: the parent folder's name) or, with `media: audio`, of audio files."""

    Options = FolderOptions

    def __init__(self, options=None):
        super().__init__(options)
        self.modality = self.options.media

    @property
    def root(self) -> Path:
        return Path(self.options.folder).expanduser()

    def ids(self) -> list[str]:
        if not self.root.is_dir():
            raise FileNotFoundError(f"dataset folder {str(self.root)!r} does not exist")
        suffixes = AUDIO_SUFFIXES if self.modality == "audio" else IMAGE_SUFFIXES
        files = sorted(p for p in self.root.rglob("*") if p.is_file() and p.suffix.lower() in suffixes)
        return [p.relative_to(self.root).as_posix() for p in files]

    def load(self, sample_id: str) -> Sample:
        path = self.root / sample_id
        if self.modality == "audio":
            audio = audio_from_bytes(path.read_bytes())
            return Sample(sample_id, audio, target=self._target(path))
        img = image_from_bytes(path.read_bytes())
        return Sample(sample_id, img, target=self._target(path))

    def _target(self, path: Path) -> str | None:
        if self.options.labels == "parent":
            return self._class(path.parent.name)
        text = path.with_suffix(".txt")
        if self.options.labels == "text" and text.is_file():
            return text.read_text().strip()
        return None

    def _class(self, label: str) -> str:
        return (self.options.class_map or {}).get(label, label)

    def describe(self) -> str:
        return f"folder:{self.root.resolve()}"

    def classes(self) -> list[ClassTarget] | None:
        if self.modality != "image" or self.options.labels != "parent":
            return None
        return [ClassTarget(n) for n in sorted({self._class((self.root / i).parent.name) for i in self.ids()})]
