"""Optical character recognition: the text of an image, scored against the known string.

``builtin:ppocr-v4`` is PaddleOCR's PP-OCRv4 (the 2023 successor of PP-OCR, Du et al. 2020,
and PP-OCRv3, Li et al. 2022): a DB text detector (Liao et al. 2020) and an SVTR-LCNet
recogniser with a CTC head over Chinese and English characters, in ONNX as the
``rapidocr-onnxruntime`` wheel ships them (Apache-2.0), run by onnxruntime on the CPU. The detector sees the image at its
own size, shrunk only where the longer side passes ``max_side`` (PaddleOCR's default 960 px;
RapidOCR's own default enlarges the shorter side to 736 px, 10 to 20 times the work on a
line of small print). The lines found are read top to bottom, left to right, and joined
with spaces; the angle classifier is off and lines read with confidence under 0.5 are
dropped (RapidOCR's default).

Per sample: the reference (``label``), the text read (``prediction``) and the character
errors (Levenshtein: substitutions + deletions + insertions, by jiwer) with the reference's
length, on the text without whitespace (``char_errors``, ``ref_chars``): the recogniser
often runs the words of small print together, a slip no reader of the text minds; and on
the text with each run of whitespace made one space (``*_spaced``). ``score`` is the
character accuracy 1 − min(1, CER) and ``correct`` whether the text was read exactly, both
without whitespace. Split level: ``char_accuracy`` = 1 − min(1, Σ errors / Σ reference
characters), the same with spaces, and the exact-match rate. ``agreement`` is the
character accuracy of the coded input's text against the uncompressed input's.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

import pyarrow as pa
from pydantic import Field

from mpq.components import Options, Task, mean_agreement
from mpq.media import Image
from mpq.registry import register

PPOCR_V4 = "builtin:ppocr-v4"


class OCROptions(Options):
    model: Literal["builtin:ppocr-v4"] = PPOCR_V4
    max_side: int = Field(default=960, ge=32)  # the detector's input: longer side shrunk to at most this


def char_errors(reference: str, hypothesis: str) -> tuple[int, int]:
    """(substitutions + deletions + insertions, reference characters)."""
    import jiwer

    if not reference or not hypothesis:
        return max(len(reference), len(hypothesis)), len(reference)
    out = jiwer.process_characters(reference, hypothesis)
    return out.substitutions + out.deletions + out.insertions, len(reference)


def spaced(text: str) -> str:
    return " ".join(text.split())


def unspaced(text: str) -> str:
    return re.sub(r"\s+", "", text)


def char_accuracy(errors: int, chars: int) -> float:
    """1 − min(1, CER); an empty reference is read right only as empty."""
    return 1.0 - min(1.0, errors / chars) if chars else float(errors == 0)


def _split_accuracy(rows, errors: str, chars: str) -> float | None:
    total = rows[chars].sum() if chars in rows.columns else 0  # absent where no sample has a label
    return None if not total else 1.0 - min(1.0, rows[errors].sum() / total)


@register("task", "ocr")
class OCR(Task):
    """PP-OCRv4 text detection and recognition; character accuracy against the known text."""

    Options = OCROptions
    columns = {
        "label": pa.string(), "prediction": pa.string(), "correct": pa.bool_(), "score": pa.float64(),
        "char_errors": pa.int64(), "ref_chars": pa.int64(), "char_errors_spaced": pa.int64(), "ref_chars_spaced": pa.int64(),
        "cer_vs_clean": pa.float64(),
    }

    def load(self) -> None:
        import tempfile
        from importlib.metadata import version

        import rapidocr_onnxruntime
        import torch
        import yaml
        from rapidocr_onnxruntime import RapidOCR

        # Threads: as many as the worker was given, not onnxruntime's default of every core.
        # RapidOCR's keyword arguments do not reach the recogniser's sessions; its config file does.
        package = Path(rapidocr_onnxruntime.__file__).parent
        config = yaml.safe_load((package / "config.yaml").read_text())
        config["Global"]["use_cls"] = False
        config["Det"].update(limit_side_len=self.options.max_side, limit_type="max")
        for part in ("Det", "Cls", "Rec"):
            config[part]["intra_op_num_threads"] = torch.get_num_threads()
        with tempfile.NamedTemporaryFile("w", suffix=".yaml") as f:
            yaml.safe_dump(config, f)
            f.flush()
            self.engine = RapidOCR(config_path=f.name)
        self.device = "cpu"  # onnxruntime's CPU build, whatever device the job names
        self.model_id = self.options.model
        self.model_revision = f"rapidocr-onnxruntime {version('rapidocr-onnxruntime')}, onnxruntime {version('onnxruntime')}"

    def read(self, image: Image) -> str:
        bgr = image.pixels[..., ::-1].copy()  # RapidOCR takes arrays in OpenCV's channel order
        lines, _ = self.engine(bgr, use_cls=False)
        return " ".join(line[1] for line in lines or [])

    @classmethod
    def aggregate(cls, rows):
        correct = rows["correct"].drop_nulls()
        return {
            "char_accuracy": _split_accuracy(rows, "char_errors", "ref_chars"),
            "char_accuracy_spaced": _split_accuracy(rows, "char_errors_spaced", "ref_chars_spaced"),
            "exact_match": correct.cast(float).mean() if correct.len() else None,
        } | mean_agreement(rows)

    def agreement(self, output, reference):
        """1 − min(1, CER) of this reading against the reading of the uncompressed page; the
        raw CER in ``cer_vs_clean`` (null where that reading is empty)."""
        errors, chars = char_errors(unspaced(reference["prediction"]), unspaced(output["prediction"]))
        return {"agreement": char_accuracy(errors, chars), "cer_vs_clean": errors / chars if chars else None}

    def predict(self, media: list[Image], targets: list[Any]) -> list[dict[str, Any]]:
        rows = []
        for image, target in zip(media, targets):
            text = self.read(image)
            if target is None:
                rows.append({"label": None, "prediction": text, "correct": None, "score": None})
                continue
            ref = str(target)
            errors, chars = char_errors(unspaced(ref), unspaced(text))
            errors_s, chars_s = char_errors(spaced(ref), spaced(text))
            rows.append({
                "label": ref, "prediction": text, "correct": errors == 0, "score": char_accuracy(errors, chars),
                "char_errors": errors, "ref_chars": chars, "char_errors_spaced": errors_s, "ref_chars_spaced": chars_s,
            })
        return rows
