"""Offline audio samples, made on the fly: speech with known transcripts, and music with stems.

- ``speech``: Harvard sentences (IEEE 1969, public domain) spoken by espeak-ng, the
  library and voice data that the ``espeakng-loader`` wheel ships (no system package),
  each sentence in a fresh process (``espeak.py``); target = the sentence.
- ``music``: short synthetic four-stem tracks (drums, bass, other, vocals: noise-burst
  percussion, a bass line, chords, and a vibrato melody with harmonics), stereo at
  44.1 kHz, deterministic per track; target = the stems, mixture = their sum.

Both exist so the smoke job and the tests run the audio path offline; the music is not
MUSDB and a separation model's SDR on it means little.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from pydantic import Field

from mpq.components import Options, Sample, Source
from mpq.media import STEMS, Audio, audio_from_array, resample
from mpq.registry import register
from mpq.sources.espeak import speak, version
from mpq.sources.harvard import SENTENCES

HARVARD = SENTENCES[:6]  # list 1's first six: a clip each
VOICES = ("en-us", "en", "en-us+f3")  # espeak-ng's "en" is British English


class SpeechOptions(Options):
    speech: Literal["espeak"]
    count: int = Field(default=len(HARVARD), ge=1, le=len(HARVARD))
    sample_rate: int = Field(default=48000, ge=8000, le=96000, description="Hz (Common Voice clips are 48 kHz)")


def espeak(text: str, voice: str, words_per_minute: int = 150) -> Audio:
    """``text`` spoken by espeak-ng's ``voice``: mono, at the library's own rate (22.05 kHz)."""
    samples, rate = speak(text, voice, words_per_minute)
    return audio_from_array(np.frombuffer(samples, np.int16), rate)


@register("source", "speech")
class Speech(Source):
    """Harvard sentences spoken by espeak-ng, with their transcripts."""

    Options = SpeechOptions
    modality = "audio"

    def ids(self) -> list[str]:
        return [f"harvard-{i + 1:02d}" for i in range(self.options.count)]

    def load(self, sample_id: str) -> Sample:
        i = int(sample_id.rsplit("-", 1)[1]) - 1
        voiced = espeak(HARVARD[i], VOICES[i % len(VOICES)])
        x = resample(voiced.samples, voiced.sample_rate, self.options.sample_rate)
        return Sample(sample_id, audio_from_array(np.clip(x, -1, 1), self.options.sample_rate), target=HARVARD[i])

    def describe(self) -> str:
        return f"espeak-ng {version()} harvard sentences"


class MusicOptions(Options):
    music: Literal["synthetic"]
    tracks: int = Field(default=2, ge=1, le=100)
    seconds: float = Field(default=3.0, gt=0, le=600)


def synthetic_track(index: int, seconds: float, rate: int = 44100) -> dict[str, np.ndarray]:
    """Four stereo stems, (n, 2) float32, deterministic for a given index."""
    rng = np.random.default_rng(index)
    n = int(seconds * rate)
    t = np.arange(n) / rate
    beat = 60 / rng.uniform(90, 130)
    root = 55 * 2 ** (rng.integers(0, 12) / 12)
    drums = np.zeros(n)
    for k, start in enumerate(np.arange(0, seconds, beat / 2)):
        i = int(start * rate)
        m = min(n - i, int(0.25 * rate))
        env = np.exp(-np.arange(m) / rate * (30 if k % 2 else 12))
        hit = rng.normal(0, 0.5, m) if k % 2 else np.sin(2 * np.pi * 60 * np.arange(m) / rate * (1 + env))
        drums[i : i + m] += hit * env
    step = (t // (2 * beat)).astype(int)
    bass_f = root * 2 ** (np.array([0, 5, 7, 3])[step % 4] / 12)
    bass = 0.4 * np.sign(np.sin(2 * np.pi * np.cumsum(bass_f) / rate)) * 0.5 + 0.2 * np.sin(2 * np.pi * np.cumsum(bass_f) / rate)
    other = sum(0.08 * np.sin(2 * np.pi * 4 * root * 2 ** (iv / 12) * t) for iv in (0, 4, 7))
    other = other * (0.6 + 0.4 * np.sin(2 * np.pi * t / (4 * beat)))
    melody = 8 * root * 2 ** (np.array([0, 2, 4, 7, 9, 7, 4, 2])[(t // beat).astype(int) % 8] / 12)
    phase = 2 * np.pi * np.cumsum(melody * (1 + 0.01 * np.sin(2 * np.pi * 5.5 * t))) / rate
    vocals = sum(0.15 / h * np.sin(h * phase) for h in (1, 2, 3, 4)) * (np.sin(2 * np.pi * t / beat) > -0.6)
    pans = {"drums": 0.5, "bass": 0.5, "other": 0.3, "vocals": 0.5}
    stems = {}
    for name, x in zip(STEMS, (drums, bass, other, vocals)):
        x = 0.25 * x / max(np.abs(x).max(), 1e-9)
        stems[name] = np.stack([x * (1 - pans[name]) * 2, x * pans[name] * 2], axis=1).astype(np.float32) * 0.5
    return stems


@register("source", "music")
class Music(Source):
    """Synthetic four-stem music (drums, bass, other, vocals); target = the stems."""

    Options = MusicOptions
    modality = "audio"

    def ids(self) -> list[str]:
        return [f"synthetic-{i}" for i in range(self.options.tracks)]

    def load(self, sample_id: str) -> Sample:
        stems = synthetic_track(int(sample_id.rsplit("-", 1)[1]), self.options.seconds)
        mixture = audio_from_array(sum(stems.values()), 44100)
        return Sample(sample_id, mixture, target={k: Audio(v, 44100) for k, v in stems.items()})

    def describe(self) -> str:
        return f"mpq synthetic music, {self.options.seconds:g} s per track"
