"""Classical image codecs through Pillow (and its plugins)."""

from __future__ import annotations

import io
from typing import ClassVar

import numpy as np
from PIL import Image

from mpq.components import Codec, Coded
from mpq.media import image_from_bytes
from mpq.registry import register


class PillowCodec(Codec):
    """Encode with Pillow at a quality setting, count the real bytes, decode with Pillow."""

    format: ClassVar[str]
    quality_range: ClassVar[tuple[int, int]] = (0, 100)

    def check_setting(self, setting) -> None:
        lo, hi = self.quality_range
        if not isinstance(setting, int) or isinstance(setting, bool) or not lo <= setting <= hi:
            raise ValueError(f"{self.name} quality must be an integer in [{lo}, {hi}]")

    def version(self) -> str:
        import PIL

        return f"pillow {PIL.__version__}"

    def save_kwargs(self, setting: int) -> dict:
        return {"quality": setting}

    def roundtrip(self, media: np.ndarray, setting: int) -> Coded:
        buf = io.BytesIO()
        Image.fromarray(media).save(buf, format=self.format, **self.save_kwargs(setting))
        data = buf.getvalue()
        return Coded(bits=8 * len(data), decoded=image_from_bytes(data).pixels)


@register("codec", "jpeg")
class JPEG(PillowCodec):
    format = "JPEG"
    quality_range = (1, 95)  # Pillow: above 95 disables parts of the quantisation
    default_settings = [5, 10, 20, 30, 50, 75]

    def version(self) -> str:
        from PIL import features

        return f"{super().version()} libjpeg {features.version('jpg')}"


@register("codec", "webp")
class WebP(PillowCodec):
    format = "WEBP"
    default_settings = [0, 10, 30, 50, 75]

    def save_kwargs(self, setting: int) -> dict:
        return {"quality": setting, "method": 4}

    def version(self) -> str:
        from PIL import features

        return f"{super().version()} libwebp {features.version('webp')}"
