"""Common Voice from an unpacked release: ``ROOT/<split>.tsv`` and ``ROOT/clips/*.mp3``.

The hub copies (``mozilla-foundation/common_voice_*``) were withdrawn in 2025 and their
loading scripts no longer run under datasets >= 4; the releases are downloaded from
Mozilla (e.g. ``cv-corpus-11.0-2022-09-21-en``). ROOT is the language folder. HF's
``validation`` split is the release's ``dev.tsv``, in file order, so ``limit: 802``
takes the study's ``validation[:802]``. The target is the ``sentence`` column.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Literal

from pydantic import Field

from mpq.components import Options, Sample, Source
from mpq.media import audio_from_bytes
from mpq.registry import register


class CommonVoiceOptions(Options):
    commonvoice: str = Field(description="the language folder of an unpacked release, e.g. cv-corpus-11.0-2022-09-21/en")
    split: Literal["dev", "test", "train", "validated", "other", "invalidated"] = "dev"


@register("source", "commonvoice")
class CommonVoice(Source):
    """Common Voice clips and transcripts from an unpacked release (language folder)."""

    Options = CommonVoiceOptions
    modality = "audio"

    @property
    def root(self) -> Path:
        return Path(self.options.commonvoice).expanduser()

    def _rows(self) -> dict[str, str]:
        tsv = self.root / f"{self.options.split}.tsv"
        if not tsv.is_file():
            raise FileNotFoundError(f"Common Voice split file {str(tsv)!r} does not exist (ROOT is the release's language folder)")
        with tsv.open(newline="", encoding="utf-8") as f:
            return {r["path"]: r["sentence"] for r in csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE)}

    def ids(self) -> list[str]:
        return list(self._rows())

    def load(self, sample_id: str) -> Sample:
        if not hasattr(self, "_sentences"):
            self._sentences = self._rows()
        audio = audio_from_bytes((self.root / "clips" / sample_id).read_bytes())
        return Sample(sample_id, audio, target=self._sentences[sample_id])

    def describe(self) -> str:
        return f"commonvoice:{self.root.resolve()}/{self.options.split}"
