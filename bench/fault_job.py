"""The fault-test job: a folder of awkward inputs and a job on it that needs no hub access.

    uv run python bench/fault_job.py DIR     # writes DIR/images, DIR/audio and DIR/fault.yaml

Every run's error rows (a truncated file, a non-image under an image's name, a clip too
short for a metric) are as much a result as its numbers: ``bench/same_results.py`` compares
them too, so a change to the engine that must change no result is checked on the paths that
fail, not only on those that work. The files are the same bytes on every call (fixed seeds;
speech by espeak-ng, seeded). The rows' ``source`` column holds the folder's path: compare
runs on the same DIR.
"""

from __future__ import annotations

import io
import sys
from pathlib import Path

import numpy as np
import soundfile as sf
import yaml
from PIL import Image

SENTENCE = "The birch canoe slid on the smooth planks."


def photo(h: int, w: int, seed: int = 0) -> np.ndarray:
    """A smooth RGB picture (compressible like a photo, unlike noise)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    base = np.stack([128 + 100 * np.sin(x / 7 + c) * np.cos(y / 9 - c) for c in range(3)], -1)
    return np.clip(base + rng.normal(0, 6, base.shape), 0, 255).astype(np.uint8)


def encoded(img: Image.Image, fmt: str) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt)
    return buf.getvalue()


def write_images(root: Path) -> None:
    root.mkdir(parents=True, exist_ok=True)
    rgb = Image.fromarray(photo(96, 128))
    files = {
        "rgb.png": encoded(rgb, "PNG"),
        "odd_size.png": encoded(Image.fromarray(photo(37, 53, seed=1)), "PNG"),  # odd sides: chroma subsampling, 8x8 blocks
        "one_pixel.png": encoded(Image.fromarray(photo(1, 1, seed=2)), "PNG"),
        "gray.png": encoded(rgb.convert("L"), "PNG"),
        "rgba.png": encoded(rgb.convert("RGBA"), "PNG"),
        "cmyk.jpg": encoded(rgb.convert("CMYK"), "JPEG"),
        "sixteen_bit.png": encoded(Image.fromarray(photo(48, 64)[..., 0].astype(np.uint16) * 257), "PNG"),
        "not_an_image.jpg": b"these bytes are text, not a JPEG\n",
        "empty.png": b"",
    }
    whole = encoded(rgb, "PNG")
    files["truncated.png"] = whole[: len(whole) // 2]
    for name, data in files.items():
        (root / name).write_bytes(data)


def wav(audio: np.ndarray, rate: int, fmt: str = "WAV", subtype: str = "PCM_16") -> bytes:
    buf = io.BytesIO()
    sf.write(buf, audio, rate, format=fmt, subtype=subtype)
    return buf.getvalue()


def write_audio(root: Path) -> None:
    from mpq.media import resample
    from mpq.sources.espeak import speak

    root.mkdir(parents=True, exist_ok=True)
    pcm, rate = speak(SENTENCE, "en-us")
    speech = np.frombuffer(pcm, np.int16).astype(np.float32) / 32768
    at16 = resample(speech, rate, 16000)
    at8 = resample(speech, rate, 8000)
    stereo = np.stack([speech, 0.5 * speech], -1)
    files = {
        "speech.wav": wav(at16, 16000),
        "speech_8k.wav": wav(at8, 8000),
        "speech_stereo.flac": wav(stereo, rate, "FLAC"),
        "silence.wav": wav(np.zeros(16000, np.float32), 16000),
        "short.wav": wav(at16[4000:4160], 16000),  # 10 ms
        "corrupt.wav": b"RIFF\x24\x00\x00\x00WAVEfmt " + bytes(range(64)),
        "not_audio.mp3": b"these bytes are text, not an MP3\n",
    }
    whole = wav(at16, 16000, "FLAC")
    files["truncated.flac"] = whole[: len(whole) // 3]
    for name, data in files.items():
        (root / name).write_bytes(data)
        if name.startswith(("speech", "short", "truncated")):
            (root / name).with_suffix(".txt").write_text(SENTENCE + "\n")


def job(root: Path) -> dict:
    return {
        "name": "fault",
        "datasets": [
            {"name": "odd_images", "source": {"folder": str(root / "images")}},
            {"name": "odd_audio", "source": {"folder": str(root / "audio"), "media": "audio", "labels": "text"}},
        ],
        "codecs": [
            {"name": "jpeg", "settings": [10, 90]},
            {"name": "webp", "settings": [20]},
            {"name": "mp3", "settings": [32]},
            {"name": "opus", "settings": [6, 16]},
        ],
        "tasks": [
            {"name": "classify", "model": "builtin:efficientnet-lite0", "batch_size": 4, "datasets": ["odd_images"]},
            {"name": "asr", "model": "builtin:whisper-tiny.en", "batch_size": 4, "datasets": ["odd_audio"]},
        ],
        "metrics": ["psnr", "lpips", "audio_psnr", "pesq", "stoi", "si_sdr"],
    }


def main(folder: str) -> Path:
    root = Path(folder).resolve()
    write_images(root / "images")
    write_audio(root / "audio")
    path = root / "fault.yaml"
    path.write_text(yaml.safe_dump(job(root), sort_keys=False))
    return path


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python bench/fault_job.py DIR")
    print(main(sys.argv[1]))
