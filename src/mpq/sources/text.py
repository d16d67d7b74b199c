"""Rendered text with known strings, for OCR offline.

Each sample is 1 to 3 lines of English, drawn with Pillow in one of the DejaVu fonts that
matplotlib's wheel ships (sans, sans bold, serif, serif italic, mono), dark ink on a light
paper-like background (a tint, a slow ripple and pixel noise), in small print (9 to 16 px)
on a page of at least 320 × 96 px: at these sizes a clean page is read almost perfectly by
a modern OCR model, while JPEG or WebP at low quality smears the strokes enough to cost
characters. Each line is one of the Harvard sentences (IEEE 1969, lists 1 and 2, public
domain) or a pangram, whole or a run of 2 to 5 of its words. Everything (text, font, size,
spacing, position, colours, background) is drawn from a generator seeded by the sample's
index, so a sample is the same in every process."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import Field

from mpq.components import Options, Sample, Source
from mpq.media import image_from_array
from mpq.registry import register
from mpq.sources.harvard import SENTENCES as HARVARD

SENTENCES = HARVARD + (  # and pangrams: every letter
    "The quick brown fox jumps over the lazy dog.",
    "Pack my box with five dozen liquor jugs.",
    "Sphinx of black quartz, judge my vow.",
)
FONTS = ("DejaVuSans.ttf", "DejaVuSans-Bold.ttf", "DejaVuSerif.ttf", "DejaVuSerif-Italic.ttf", "DejaVuSansMono.ttf")
SIZES = (9, 10, 11, 12, 14, 16)  # font size in pixels
MIN_SIZE = (96, 320)  # height, width


class TextOptions(Options):
    text: Literal["rendered"]
    count: int = Field(default=16, ge=1, le=100_000)


@functools.cache
def font(name: str, size: int):
    import matplotlib
    from PIL import ImageFont

    return ImageFont.truetype(str(Path(matplotlib.get_data_path()) / "fonts" / "ttf" / name), size)


def render(index: int) -> tuple[np.ndarray, str]:
    """Sample ``index``: an (H, W, 3) uint8 image of 1 to 3 lines of text, and that text
    (its lines joined by newlines)."""
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(index)
    lines = []
    for k in range(int(rng.integers(1, 4))):
        words = SENTENCES[(3 * index + k) % len(SENTENCES)].split()
        if rng.random() < 0.5:  # a run of 2 to 5 words
            n = int(rng.integers(2, 6))
            start = int(rng.integers(0, len(words) - n + 1))
            words = words[start : start + n]
        lines.append(" ".join(words))
    text = "\n".join(lines)
    face = font(FONTS[index % len(FONTS)], int(rng.choice(SIZES)))
    spacing = int(rng.integers(4, 9))
    draw = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    _, _, right, bottom = draw.multiline_textbbox((0, 0), text, font=face, spacing=spacing)
    pad = int(rng.integers(6, 16))
    # At least MIN_SIZE, so that JPEG's fixed headers (some 600 bytes) do not set the rate: a
    # single line of small print alone costs JPEG over 1 bit per pixel at quality 5.
    h, w = max(bottom + 2 * pad, MIN_SIZE[0]), max(right + 2 * pad, MIN_SIZE[1])
    at = (int(rng.integers(pad, w - right - pad + 1)), int(rng.integers(pad, h - bottom - pad + 1)))
    y, x = np.mgrid[0:h, 0:w]
    ripple = 8 * np.sin(x / rng.uniform(20, 60) + rng.uniform(0, 2 * np.pi)) * np.cos(y / rng.uniform(15, 40))
    paper = rng.uniform(215, 245) + ripple + rng.normal(0, 6, (h, w))
    background = np.clip(paper[..., None] + rng.uniform(-6, 6, 3), 0, 255).astype(np.uint8)
    img = Image.fromarray(background)
    ink = tuple(int(v) for v in rng.integers(10, 90, 3))
    ImageDraw.Draw(img).multiline_text(at, text, font=face, fill=ink, spacing=spacing)
    return np.asarray(img), text


@register("source", "text")
class RenderedText(Source):
    """``count`` rendered pages of text (ids "page-0000", ...); target = the text."""

    Options = TextOptions

    def ids(self) -> list[str]:
        return [f"page-{i:04d}" for i in range(self.options.count)]

    def load(self, sample_id: str) -> Sample:
        i = int(sample_id.rsplit("-", 1)[1])
        if not 0 <= i < self.options.count:
            raise ValueError(f"no rendered page {sample_id!r}: ids are page-0000..page-{self.options.count - 1:04d}")
        pixels, text = render(i)
        return Sample(sample_id, image_from_array(pixels), target=text)

    def describe(self) -> str:
        from importlib.metadata import version

        return f"text lines rendered by Pillow {version('pillow')} in matplotlib {version('matplotlib')}'s DejaVu fonts"
