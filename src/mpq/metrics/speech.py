"""Speech quality and intelligibility metrics, each through its reference package: PESQ
(ITU-T P.862.2 wide band, ``pesq``), STOI and ESTOI (Taal et al. 2011, Jensen & Taal 2016,
``pystoi``), ViSQOL v3 speech mode (Chinen et al. 2020, ``visqol-python``) and SI-SDR
(Le Roux et al. 2019).

Every one compares mono: the mean of the channels (as ViSQOL's own file loader does).
PESQ and ViSQOL run at 16 kHz, each signal resampled with soxr (HQ) from its own rate;
STOI takes the signals at their own rate and resamples to its 10 kHz itself (pystoi's
polyphase resampler, which mirrors the MATLAB ``resample`` of the authors' code); SI-SDR
is computed at the reference's rate. Each metric records this in its ``*_input`` column.

Where a metric is undefined it gives null, never an error row: a silent reference (for
PESQ, ViSQOL and SI-SDR a silent coded signal too: PESQ's package fails on it, ViSQOL
gives NaN, SI-SDR is 0 / 0); PESQ where it finds no utterance or a clip is under 0.25 s; STOI where fewer than 30 frames
(about 0.4 s of speech) remain after its silent-frame removal (pystoi warns and returns 1e-5); ViSQOL where
the reference has no 20-frame patch with voice activity.
"""

from __future__ import annotations

import functools
import math
import threading
import warnings

import numpy as np
import pyarrow as pa

from mpq.components import Metric
from mpq.media import Audio, resample, with_channels
from mpq.registry import register

SPEECH_RATE = 16000  # PESQ wide band and ViSQOL speech mode


def mono(audio: Audio, rate: int | None = None) -> np.ndarray:
    """The mean of the channels as float64 (n,), resampled with soxr (HQ) to ``rate``."""
    x = with_channels(audio.samples, 1)
    if rate is not None:
        x = resample(x, audio.sample_rate, rate)
    return x[:, 0].astype(np.float64)


def silent(x: np.ndarray) -> bool:
    return not np.any(x)


@register("metric", "pesq")
class PESQ(Metric):
    """PESQ wide band (ITU-T P.862.2) MOS-LQO, about 1 to 4.64, higher is better; 16 kHz mono."""

    modality = "audio"
    columns = {"pesq": pa.float64(), "pesq_input": pa.string()}

    def compute(self, references: list[Audio], tests: list[Audio]):
        from pesq import BufferTooShortError, NoUtterancesError, pesq

        out = []
        for r, t in zip(references, tests):
            ref, test = mono(r, SPEECH_RATE), mono(t, SPEECH_RATE)
            try:
                value = None if silent(ref) or silent(test) else float(pesq(SPEECH_RATE, ref, test, "wb"))
            except (NoUtterancesError, BufferTooShortError):
                value = None
            out.append({"pesq": value, "pesq_input": "wb, 16000 Hz (soxr HQ), mean of channels"})
        return out


@register("metric", "stoi")
class STOI(Metric):
    """STOI and ESTOI (0–1, higher is better); mono, resampled to 10 kHz by pystoi.

    ESTOI may dip below 0 for very poor signals."""

    modality = "audio"
    columns = {"stoi": pa.float64(), "estoi": pa.float64(), "stoi_input": pa.string()}

    def compute(self, references: list[Audio], tests: list[Audio]):
        out = []
        for r, t in zip(references, tests):
            rate = r.sample_rate
            ref, test = mono(r), mono(t, rate)
            row = {"stoi": stoi(ref, test, rate, False), "estoi": stoi(ref, test, rate, True)}
            out.append(row | {"stoi_input": f"{rate} Hz → 10000 Hz (pystoi), mean of channels"})
        return out


_GLOBAL_RNG = threading.Lock()  # numpy's global generator is one per process


def stoi(ref: np.ndarray, test: np.ndarray, rate: int, extended: bool) -> float | None:
    """pystoi's (E)STOI; None for a silent reference or too little speech (pystoi then warns
    and returns 1e-5, a value that would read as a real score)."""
    from pystoi import stoi as pystoi

    if silent(ref):
        return None
    # ESTOI adds epsilon-sized noise from numpy's global generator: seeded here, and the
    # caller's state put back, so that the same clips give the same row in every run.
    with _GLOBAL_RNG, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        state = np.random.get_state()
        np.random.seed(0)
        try:
            value = float(pystoi(ref, test, rate, extended=extended))
        finally:
            np.random.set_state(state)
    return None if any("Not enough STFT frames" in str(w.message) for w in caught) else value


@functools.cache
def visqol_api():
    """visqol-python in speech mode with the deep-lattice mapper, as ViSQOL v3.3's C++ tool
    runs it by default (the polynomial fallback over-predicts degraded speech)."""
    from visqol import VisqolApi

    api = VisqolApi()
    api.create(mode="speech", use_lattice_model=True)
    return api


@register("metric", "visqol")
class ViSQOL(Metric):
    """ViSQOL v3 speech-mode MOS-LQO (1–5, higher is better); 16 kHz mono.

    About 4.5 for identical speech (the lattice mapping's ceiling depends on the clip)."""

    modality = "audio"
    columns = {"visqol": pa.float64(), "visqol_input": pa.string()}

    def compute(self, references: list[Audio], tests: list[Audio]):
        api = visqol_api()
        out = []
        for r, t in zip(references, tests):
            ref, test = mono(r, SPEECH_RATE), mono(t, SPEECH_RATE)
            try:
                value = None if silent(ref) or silent(test) else float(api.measure_from_arrays(ref, test, SPEECH_RATE).moslqo)
            except IndexError:  # visqol-python's failure when no reference patch has voice activity
                value = None
            out.append({"visqol": None if value is None or math.isnan(value) else value,
                        "visqol_input": "speech, lattice, 16000 Hz (soxr HQ), mean of channels"})
        return out


def si_sdr(reference: np.ndarray, test: np.ndarray) -> float | None:
    """SI-SDR in dB of zero-mean signals: 10·log10(‖αs‖² / ‖αs − ŝ‖²), α = ⟨ŝ, s⟩ / ‖s‖²;
    inf when ŝ is a scaled copy of s, None where it is 0 / 0 (a silent reference or test)."""
    s, est = reference - reference.mean(), test - test.mean()
    energy = float(np.dot(s, s))
    if energy == 0 or not np.any(est):
        return None
    target = (np.dot(est, s) / energy) * s
    signal, noise = float(np.dot(target, target)), float(np.sum((est - target) ** 2))
    return math.inf if noise == 0 else -math.inf if signal == 0 else 10 * math.log10(signal / noise)


@register("metric", "si_sdr")
class SISDR(Metric):
    """SI-SDR (Le Roux et al. 2019) in dB, higher is better; mono at the reference's rate."""

    modality = "audio"
    columns = {"si_sdr": pa.float64(), "si_sdr_input": pa.string()}

    def compute(self, references: list[Audio], tests: list[Audio]):
        return [{"si_sdr": si_sdr(mono(r), mono(t, r.sample_rate)), "si_sdr_input": f"{r.sample_rate} Hz, mean of channels"}
                for r, t in zip(references, tests)]
