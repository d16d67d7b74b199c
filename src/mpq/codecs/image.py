"""Classical image codecs: JPEG, WebP and AVIF through Pillow, JPEG XL through imagecodecs.

``bits`` is the whole file; ``payload_bits`` the coded bitstream inside it (see ``containers``)."""

from __future__ import annotations

import io
from typing import ClassVar

import numpy as np
import PIL.Image
import pyarrow as pa

from mpq.codecs import containers
from mpq.components import Codec, Coded
from mpq.media import Image, image_from_bytes
from mpq.registry import register


class PillowCodec(Codec):
    """Encode with Pillow at a quality setting, count the real bytes, decode with Pillow."""

    format: ClassVar[str]
    quality_range: ClassVar[tuple[int, int]] = (0, 100)
    payload: ClassVar = staticmethod(lambda data: len(data))  # bytes of the bitstream inside the file
    columns = {"payload_bits": pa.int64()}

    def check_setting(self, setting) -> None:
        lo, hi = self.quality_range
        if not isinstance(setting, int) or isinstance(setting, bool) or not lo <= setting <= hi:
            raise ValueError(f"{self.name} quality must be an integer in [{lo}, {hi}]")

    def version(self) -> str:
        import PIL

        return f"pillow {PIL.__version__}"

    def save_kwargs(self, setting: int) -> dict:
        return {"quality": setting}

    def roundtrip(self, media: Image, setting: int) -> Coded:
        buf = io.BytesIO()
        PIL.Image.fromarray(media.pixels).save(buf, format=self.format, **self.save_kwargs(setting))
        data = buf.getvalue()
        return Coded(bits=8 * len(data), decoded=image_from_bytes(data), extra={"payload_bits": 8 * self.payload(data)})


@register("codec", "jpeg")
class JPEG(PillowCodec):
    """JPEG through Pillow (libjpeg), the setting is the quality (1-95, higher keeps more)."""

    format = "JPEG"
    payload = staticmethod(containers.jpeg_payload)
    quality_range = (1, 95)  # Pillow: above 95 disables parts of the quantisation
    default_settings = [5, 10, 20, 30, 50, 75]

    def version(self) -> str:
        from PIL import features

        return f"{super().version()} libjpeg {features.version('jpg')}"


@register("codec", "webp")
class WebP(PillowCodec):
    """Lossy WebP through Pillow (libwebp, method 4), the setting is the quality (0-100)."""

    format = "WEBP"
    payload = staticmethod(containers.riff_payload)
    default_settings = [0, 10, 30, 50, 75]

    def save_kwargs(self, setting: int) -> dict:
        return {"quality": setting, "method": 4}

    def version(self) -> str:
        from PIL import features

        return f"{super().version()} libwebp {features.version('webp')}"


@register("codec", "avif")
class AVIF(PillowCodec):
    """AV1 still images through Pillow's own AVIF support (libavif with libaom)."""

    format = "AVIF"
    payload = staticmethod(containers.isobmff_payload)
    default_settings = [0, 10, 25, 50, 75]

    def save_kwargs(self, setting: int) -> dict:
        # One encoder thread: the same bytes on every machine, and codec_cpus stays honest.
        return {"quality": setting, "speed": 6, "subsampling": "4:2:0", "max_threads": 1}

    def version(self) -> str:
        from PIL import _avif

        return f"{super().version()} libavif {_avif.libavif_version} ({_avif.codec_versions()})"


@register("codec", "jpegxl")
class JPEGXL(Codec):
    """JPEG XL through imagecodecs (libjxl); the setting is the Butteraugli distance.

    The distance is cjxl's ``-d``: 0 is lossless, 1 visually lossless, larger is coarser (up to 25)."""

    columns = {"payload_bits": pa.int64()}
    default_settings = [1, 2, 4, 8, 15]
    EFFORT = 7  # libjxl's default

    def check_setting(self, setting) -> None:
        if not isinstance(setting, (int, float)) or isinstance(setting, bool) or not 0 <= setting <= 25:
            raise ValueError("jpegxl distance must be a number in [0, 25]")

    def version(self) -> str:
        import imagecodecs

        return f"imagecodecs {imagecodecs.__version__} {imagecodecs.jpegxl_version()} effort {self.EFFORT}"

    def roundtrip(self, media: Image, setting: float) -> Coded:
        import imagecodecs

        data = imagecodecs.jpegxl_encode(
            np.ascontiguousarray(media.pixels), distance=float(setting), lossless=setting == 0, effort=self.EFFORT, numthreads=1
        )
        decoded = imagecodecs.jpegxl_decode(data)
        return Coded(
            bits=8 * len(data), decoded=Image(np.ascontiguousarray(decoded, dtype=np.uint8)),
            extra={"payload_bits": 8 * containers.jxl_payload(data)},
        )
