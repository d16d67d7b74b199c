"""In-memory media (``Image``, ``Audio``) and the conversions every source applies before a codec sees a sample.

An ``Image`` holds ``uint8`` pixels of shape (H, W, 3), RGB. Whatever the file held is converted
explicitly and the conversion is recorded in the row's ``conversion`` column:

- grayscale (L, I, I;16, F) and palette images become RGB by channel replication;
- 16-bit and float images are scaled to 8 bits over their full range (16-bit: ``>> 8``);
- RGBA, LA and transparent palette images are composited on white;
- CMYK and YCbCr go through Pillow's colour conversion;
- an EXIF orientation other than "upright" is applied (rotated/flipped as a viewer shows it).
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import pyarrow as pa
from PIL import Image as PILImage
from PIL import ImageFile, ImageOps

# Truncated files must fail loudly, not decode as half-grey images.
ImageFile.LOAD_TRUNCATED_IMAGES = False


class MediaError(ValueError):
    """A sample that cannot be turned into valid media; it becomes an ``error`` row."""


# One Arrow struct for media of either kind: the encoded cache stores decoded media in it and
# the Ray engine moves a sample's media between stages in it.
ARROW = pa.struct([
    ("kind", pa.string()), ("shape", pa.list_(pa.int64())), ("data", pa.large_binary()),
    ("sample_rate", pa.int64()), ("conversion", pa.string()), ("orientation", pa.int64()),
])


class Media:
    """A kind of media and what it means to the pipeline: the columns that describe an input,
    the rate columns of a coded version (the study's unit first), the step that follows every
    decode, the job's memory bound, and its Arrow form (``ARROW``). A dataset's modality is
    its media type, resolved once with the job (mpq.job)."""

    name: ClassVar[str]
    rates: ClassVar[tuple[str, ...]]
    conversion: str | None

    def size(self) -> dict:
        """The input's size columns."""
        raise NotImplementedError

    def rate(self, bits: int) -> dict:
        """The rate columns of a coded version of this input holding ``bits``."""
        raise NotImplementedError

    def after_decode(self, decoded: Media) -> tuple[Media, str | None]:
        """What downstream sees of a codec's output of this input, and the conversion that made it, if any."""
        return decoded, None

    def too_large(self, limits) -> str | None:
        """Why this input is over the job's memory bound (``limits``: the job's ``max_pixels`` /
        ``max_seconds``), if it is."""
        return None

    def to_arrow(self) -> dict:
        """A value of ``ARROW``."""
        raise NotImplementedError

    @classmethod
    def from_value(cls, value: dict) -> Media:
        """This type's media from a value of ``ARROW`` of its kind."""
        raise NotImplementedError

    @staticmethod
    def from_arrow(value: dict) -> Media:
        """The media a value of ``ARROW`` holds, exactly; MediaError for an unknown kind."""
        if value["kind"] not in MEDIA:
            raise MediaError(f"unknown media kind {value['kind']!r}")
        return MEDIA[value["kind"]].from_value(value)

    def digest(self) -> str:
        """What the media holds, as a short hash: the encoded cache's key names the original, so an
        entry made from other data under the same sample id is never served."""
        value = self.to_arrow()
        h = hashlib.blake2b(digest_size=16)
        h.update(f"{value['kind']} {value['shape']} {value['sample_rate']}".encode())
        h.update(value["data"])
        return h.hexdigest()


@dataclass(eq=False)
class Image(Media):
    """An 8-bit RGB image, upright."""

    pixels: np.ndarray  # (H, W, 3) uint8
    conversion: str | None = None  # what was done to get here, None if the input was 8-bit RGB
    orientation: int = 1  # the EXIF orientation applied (1: none), for a label map to follow

    name, rates = "image", ("bpp",)

    def __post_init__(self):
        if self.pixels.dtype != np.uint8 or self.pixels.ndim != 3 or self.pixels.shape[2] != 3:
            raise MediaError(f"an Image holds (H, W, 3) uint8 pixels, not {self.pixels.dtype} {self.pixels.shape}")

    @property
    def height(self) -> int:
        return int(self.pixels.shape[0])

    @property
    def width(self) -> int:
        return int(self.pixels.shape[1])

    def size(self) -> dict:
        return {"height": self.height, "width": self.width}

    def rate(self, bits: int) -> dict:
        return {"bpp": bits / (self.height * self.width)}

    def after_decode(self, decoded: Image) -> tuple[Image, str | None]:
        """Grayscale inputs go through the codec as RGB; what comes back is made gray again, as
        the input was, and the row says so."""
        return (Image(back_to_gray(decoded.pixels)), GRAY_BACK) if is_gray(self.pixels) else (decoded, None)

    def too_large(self, limits) -> str | None:
        pixels = self.height * self.width
        if limits.max_pixels and pixels > limits.max_pixels:
            return f"{self.width}×{self.height} = {pixels} pixels, over the job's max_pixels ({limits.max_pixels})"
        return None

    def to_arrow(self) -> dict:
        return _value("image", self.pixels, self.conversion, orientation=self.orientation)

    @classmethod
    def from_value(cls, value: dict) -> Image:
        return cls(_array(value, np.uint8), value["conversion"], value["orientation"])


def _value(kind: str, x: np.ndarray, conversion: str | None, sample_rate: int | None = None, orientation: int | None = None) -> dict:
    return {"kind": kind, "shape": list(x.shape), "data": np.ascontiguousarray(x).tobytes(), "sample_rate": sample_rate,
            "conversion": conversion, "orientation": orientation}


def _array(value: dict, dtype) -> np.ndarray:
    return np.frombuffer(value["data"], dtype).reshape(value["shape"]).copy()  # a copy: writable, as media are


def to_rgb(img: PILImage.Image) -> Image:
    """Convert any Pillow image to 8-bit RGB, upright (EXIF orientation applied, as the
    ``datasets`` library does), recording the conversion."""
    try:
        img.load()
    except Exception as exc:  # Pillow raises OSError, SyntaxError, ValueError... for bad files
        raise MediaError(f"cannot decode image: {exc}") from exc
    orientation = img.getexif().get(0x0112, 1)
    if orientation in range(2, 9):
        out = _to_rgb(ImageOps.exif_transpose(img))
        return Image(out.pixels, "; ".join(filter(None, [f"EXIF orientation {orientation} applied", out.conversion])), orientation)
    return _to_rgb(img)


def _to_rgb(img: PILImage.Image) -> Image:
    mode = img.mode
    if mode == "RGB":
        return Image(np.asarray(img, dtype=np.uint8).copy())
    if mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(img)
        if mode.startswith("I;16") or (mode == "I" and arr.max(initial=0) > 255):
            gray = (arr.astype(np.uint32) >> 8).astype(np.uint8)
            note = f"{mode} (16-bit) → 8-bit (>> 8) → RGB"
        elif mode == "F":
            lo, hi = float(np.nanmin(arr)), float(np.nanmax(arr))
            scale = 255.0 / (hi - lo) if hi > lo else 0.0
            gray = np.nan_to_num((arr - lo) * scale).round().astype(np.uint8)
            note = "F (float) → 8-bit (min-max) → RGB"
        else:
            gray = arr.astype(np.uint8)
            note = f"{mode} → RGB"
        return Image(np.repeat(gray[..., None], 3, axis=2), note)
    if mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        white = PILImage.new("RGBA", rgba.size, (255, 255, 255, 255))
        flat = PILImage.alpha_composite(white, rgba).convert("RGB")
        return Image(np.asarray(flat, dtype=np.uint8).copy(), f"{mode} → RGB (alpha composited on white)")
    try:
        rgb = img.convert("RGB")
    except Exception as exc:
        raise MediaError(f"cannot convert image mode {mode} to RGB: {exc}") from exc
    return Image(np.asarray(rgb, dtype=np.uint8).copy(), f"{mode} → RGB")


GRAY_BACK = "decoded RGB → L (ITU-R 601 luma) → RGB"
# Real, lossless images shipped in scikit-image's wheel (the `samples` source; the tiny ViT's
# classes). camera is grayscale and logo is RGBA: they exercise the conversions to RGB.
SKIMAGE_PHOTOS = ("astronaut", "camera", "chelsea", "coffee", "rocket", "immunohistochemistry", "hubble_deep_field", "logo")


def is_gray(pixels: np.ndarray) -> bool:
    """An RGB image whose three channels are identical (a grayscale image made RGB)."""
    return bool((pixels[..., 0] == pixels[..., 1]).all() and (pixels[..., 1] == pixels[..., 2]).all())


def back_to_gray(pixels: np.ndarray) -> np.ndarray:
    """A codec's RGB output of a grayscale input, made grayscale again (Pillow's "L" conversion)."""
    gray = np.asarray(PILImage.fromarray(pixels).convert("L"))
    return np.repeat(gray[..., None], 3, axis=2)


def image_from_bytes(data: bytes) -> Image:
    try:
        img = PILImage.open(io.BytesIO(data))
    except PILImage.UnidentifiedImageError as exc:  # its message holds a memory address; rows must be reproducible
        raise MediaError(f"not a readable image: no image format recognised in {len(data)} bytes") from exc
    except Exception as exc:
        raise MediaError(f"not a readable image: {exc}") from exc
    return to_rgb(img)


def image_from_array(arr: np.ndarray) -> Image:
    """Arrays as scikit-image and HF datasets hand them out: (H, W), (H, W, 1|3|4), uint8 or uint16."""
    arr = np.asarray(arr)
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[..., 0]
    shape_ok = arr.ndim == 2 or (arr.ndim == 3 and arr.shape[2] in (3, 4))
    if not shape_ok or arr.dtype not in (np.uint8, np.uint16) or (arr.dtype == np.uint16 and arr.ndim != 2):
        raise MediaError(f"unsupported image array: dtype {arr.dtype}, shape {arr.shape}")
    return to_rgb(PILImage.fromarray(np.ascontiguousarray(arr)))


# EXIF orientation → the transpose that makes it upright (as ImageOps.exif_transpose).
_UPRIGHT = {2: PILImage.Transpose.FLIP_LEFT_RIGHT, 3: PILImage.Transpose.ROTATE_180, 4: PILImage.Transpose.FLIP_TOP_BOTTOM,
            5: PILImage.Transpose.TRANSPOSE, 6: PILImage.Transpose.ROTATE_270, 7: PILImage.Transpose.TRANSVERSE, 8: PILImage.Transpose.ROTATE_90}


def oriented(label: np.ndarray, orientation: int) -> np.ndarray:
    """A label map turned as its image was (its own file holds no orientation: it is stored as the image's pixels were)."""
    if orientation not in _UPRIGHT:
        return label
    return np.asarray(PILImage.fromarray(label.astype(np.int32)).transpose(_UPRIGHT[orientation])).astype(np.int32)


def label_map_from_bytes(data: bytes) -> np.ndarray:
    """An annotation image (PNG, one class index per pixel) as an (H, W) integer array, read
    as stored: never converted to RGB, never resampled."""
    try:
        img = PILImage.open(io.BytesIO(data))
        img.load()
    except Exception as exc:
        raise MediaError(f"not a readable label map: {type(exc).__name__}") from exc
    if img.mode not in ("L", "P", "I", "I;16", "I;16B", "I;16L"):
        raise MediaError(f"label map has mode {img.mode}; expected one channel of class indices (L, P, I or I;16)")
    return np.asarray(img).astype(np.int32)


# ---------------------------------------------------------------------------------------
# Audio: float32 samples of shape (num_samples, channels) in [-1, 1], at the file's own rate.
#
# Conversions (recorded in ``conversion``): integer PCM is scaled to [-1, 1] (by the
# decoder); float samples beyond [-1, 1] are clipped; more than two channels are mixed
# down to mono (the mean). Refused with a MediaError: no samples, clips shorter than
# MIN_SECONDS (too short for CDPAM's and the codecs' windows), NaN or infinite samples,
# and sample rates outside [MIN_RATE, MAX_RATE]. Odd rates are kept: each
# codec, model and metric resamples (soxr) to the rate it needs and back.

MIN_RATE, MAX_RATE = 1000, 384_000
MIN_SECONDS = 0.01
STEMS = ("drums", "bass", "other", "vocals")  # a music track's stems: MUSDB18's order, as Demucs names its sources


@dataclass(eq=False)
class Audio(Media):
    samples: np.ndarray  # (num_samples, channels) float32 in [-1, 1]
    sample_rate: int
    conversion: str | None = None

    name, rates = "audio", ("bps", "kbps")

    @property
    def channels(self) -> int:
        return int(self.samples.shape[1])

    @property
    def num_samples(self) -> int:
        return int(self.samples.shape[0])

    @property
    def duration(self) -> float:
        return self.num_samples / self.sample_rate

    def size(self) -> dict:
        return {"sample_rate": self.sample_rate, "channels": self.channels, "num_samples": self.num_samples, "duration": self.duration}

    def rate(self, bits: int) -> dict:
        """Bits per sample as the study counts them (per channel sample: bits / (time steps ×
        channels)) and kbps."""
        return {"bps": bits / (self.num_samples * self.channels), "kbps": bits / self.duration / 1000}

    def too_large(self, limits) -> str | None:
        if limits.max_seconds and self.duration > limits.max_seconds:
            return f"{self.duration:.0f} s, over the job's max_seconds ({limits.max_seconds:g})"
        return None

    def to_arrow(self) -> dict:
        return _value("audio", self.samples.astype(np.float32, copy=False), self.conversion, sample_rate=self.sample_rate)

    @classmethod
    def from_value(cls, value: dict) -> Audio:
        return cls(_array(value, np.float32), int(value["sample_rate"]), value["conversion"])


def audio_from_array(samples: np.ndarray, sample_rate: int, conversion: str | None = None) -> Audio:
    """Check and canonicalise decoded samples: (n,) or (n, channels), any float or int PCM dtype."""
    x = np.asarray(samples)
    notes = [conversion] if conversion else []
    if x.ndim == 1:
        x = x[:, None]
    if x.ndim != 2:
        raise MediaError(f"unsupported audio array shape {x.shape}; expected (samples,) or (samples, channels)")
    if not MIN_RATE <= int(sample_rate) <= MAX_RATE:
        raise MediaError(f"unsupported sample rate {sample_rate} Hz; expected {MIN_RATE}..{MAX_RATE} Hz")
    if np.issubdtype(x.dtype, np.integer):
        info = np.iinfo(x.dtype)
        x = (x.astype(np.float64) - (info.max + 1 + info.min) / 2) / ((info.max - info.min + 1) / 2)
    x = x.astype(np.float32)
    if x.shape[0] == 0 or x.shape[1] == 0:
        raise MediaError("empty audio: no samples")
    if x.shape[0] < MIN_SECONDS * sample_rate:
        raise MediaError(f"audio too short: {x.shape[0]} samples at {sample_rate} Hz (minimum {MIN_SECONDS * 1000:g} ms)")
    bad = int(np.count_nonzero(~np.isfinite(x)))
    if bad:
        raise MediaError(f"audio has {bad} NaN or infinite sample(s)")
    if x.shape[1] > 2:
        notes.append(f"{x.shape[1]} channels → mono (mean)")
        x = x.mean(axis=1, keepdims=True)
    over = int(np.count_nonzero(np.abs(x) > 1.0))
    if over:
        notes.append(f"clipped {over} sample(s) beyond [-1, 1]")
        x = np.clip(x, -1.0, 1.0)
    return Audio(np.ascontiguousarray(x), int(sample_rate), "; ".join(notes) or None)


def audio_from_bytes(data: bytes) -> Audio:
    """Decode an audio file: libsndfile (WAV, FLAC, OGG, MP3) first, FFmpeg (PyAV) for the rest."""
    import soundfile as sf

    if not data:
        raise MediaError("not a readable audio file: 0 bytes")
    try:
        samples, rate = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)
    except Exception:
        samples, rate = _decode_with_ffmpeg(data)
    return audio_from_array(samples, rate)


def _decode_with_ffmpeg(data: bytes) -> tuple[np.ndarray, int]:
    import av

    try:
        with av.open(io.BytesIO(data)) as container:
            if not container.streams.audio:
                raise MediaError("not a readable audio file: no audio stream")
            stream = container.streams.audio[0]
            rate = stream.codec_context.sample_rate
            frames = [f.to_ndarray() for f in container.decode(stream)]
    except MediaError:
        raise
    except Exception as exc:  # PyAV raises InvalidDataError, EOFError, ... for bad files
        raise MediaError(f"not a readable audio file: {type(exc).__name__}") from exc
    return planar_to_samples(frames), rate


def planar_to_samples(frames: list[np.ndarray]) -> np.ndarray:
    """PyAV frames (planar (channels, n) or packed (1, n * channels)) → (n, channels) float32."""
    if not frames:
        return np.zeros((0, 1), np.float32)
    return np.concatenate(frames, axis=1).T.astype(np.float32)


def resample(samples: np.ndarray, rate_in: int, rate_out: int) -> np.ndarray:
    """soxr's high-quality resampler; (n, channels) float32 in and out."""
    import soxr

    if rate_in == rate_out:
        return samples
    return soxr.resample(samples, rate_in, rate_out, quality="HQ").astype(np.float32)


def fit_length(samples: np.ndarray, n: int) -> np.ndarray:
    """Trim or zero-pad (n, channels) samples to exactly n."""
    if samples.shape[0] >= n:
        return samples[:n]
    return np.pad(samples, ((0, n - samples.shape[0]), (0, 0)))


def with_channels(samples: np.ndarray, channels: int) -> np.ndarray:
    """Mono ↔ stereo: duplicate a mono channel, or average channels down to mono."""
    if samples.shape[1] == channels:
        return samples
    if channels == 1:
        return samples.mean(axis=1, keepdims=True)
    if samples.shape[1] == 1:
        return np.repeat(samples, channels, axis=1)
    raise ValueError(f"cannot map {samples.shape[1]} channels to {channels}")


MEDIA: dict[str, type[Media]] = {m.name: m for m in (Image, Audio)}
