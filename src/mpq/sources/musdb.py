"""MUSDB18-HQ from its unpacked folder: ``ROOT/{train,test}/<track>/{mixture,drums,bass,other,vocals}.wav``.

MUSDB18-HQ is distributed as a zip (sigsep, on Zenodo), not through a hub: unpack it and
name the folder. The sample is the mixture; the target is the four stems.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field

from mpq.components import Options, Sample, Source
from mpq.media import STEMS, audio_from_bytes
from mpq.registry import register


class MUSDBOptions(Options):
    musdb: str = Field(description="the unpacked MUSDB18-HQ folder")
    subset: Literal["train", "test"] = "test"


@register("source", "musdb")
class MUSDB(Source):
    """MUSDB18-HQ tracks (WAV stems) from a local folder; target = the four stems."""

    Options = MUSDBOptions
    modality = "audio"

    @property
    def root(self) -> Path:
        return Path(self.options.musdb).expanduser() / self.options.subset

    def ids(self) -> list[str]:
        if not self.root.is_dir():
            raise FileNotFoundError(
                f"MUSDB18-HQ folder {str(self.root)!r} does not exist (unpack musdb18hq.zip and name its folder)"
            )
        return sorted(p.name for p in self.root.iterdir() if (p / "mixture.wav").is_file())

    def load(self, sample_id: str) -> Sample:
        track = self.root / sample_id
        mixture = audio_from_bytes((track / "mixture.wav").read_bytes())
        stems = {name: audio_from_bytes((track / f"{name}.wav").read_bytes()) for name in STEMS}
        return Sample(sample_id, mixture, target=stems)

    def describe(self) -> str:
        return f"musdb18hq:{self.root.resolve()}"
