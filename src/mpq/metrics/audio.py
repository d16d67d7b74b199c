"""Audio quality metrics: PSNR on [-1, 1] and CDPAM (Manocha et al. 2021).

CDPAM is loaded from the trained weights that ship in the ``cdpam`` wheel, built the way
``cdpam.CDPAM`` builds it (its own constructor fails under torch >= 2.6, whose
``torch.load`` refuses the pickled checkpoint by default; the file is the installed
package's own, so it is loaded with ``weights_only=False``). CDPAM expects what its
``load_audio`` produces: 22.05 kHz mono, scaled to the int16 range (× 32768, rounded).
"""

from __future__ import annotations

import functools
import math
from pathlib import Path

import numpy as np
import pyarrow as pa
from pydantic import Field

from mpq.components import Metric, Options
from mpq.media import Audio, resample, with_channels
from mpq.metrics.fidelity import psnr
from mpq.registry import register

CDPAM_RATE = 22050


@register("metric", "audio_psnr")
class AudioPSNR(Metric):
    """PSNR of audio samples in [-1, 1] (peak 1), all channels; column `psnr`."""

    modality = "audio"
    columns = {"psnr": pa.float64()}

    def compute(self, references: list[Audio], tests: list[Audio]):
        return [{"psnr": psnr(r.samples, t.samples, peak=1.0)} for r, t in zip(references, tests)]


def cdpam_weights() -> Path:
    import cdpam

    return Path(cdpam.__file__).parent / "CDPAM_trained" / "scratchJNDdefault_best_model.pth"


@functools.cache
def load_cdpam():
    """cdpam's FINnet with the hyper-parameters of ``cdpam.CDPAM`` and its shipped weights."""
    import torch
    from cdpam.models import FINnet

    model = FINnet(
        encoder_layers=16, encoder_filters=64, ndim=[16, 6], classif_dp=0.05, classif_BN=0,
        classif_act="no", input_size=512,
    )
    state = torch.load(cdpam_weights(), map_location="cpu", weights_only=False)["state"]  # trusted: the installed wheel's file
    model.load_state_dict(state)
    return model.eval()


class CDPAMOptions(Options):
    # Compare only the first `seconds` of each clip: CDPAM's encoder costs about 2 s of CPU
    # per second of audio and signal, so short excerpts keep a job fast. Default: all of it.
    seconds: float | None = Field(default=None, gt=0)


def cdpam_input(audio: Audio, seconds: float | None = None) -> np.ndarray:
    """22.05 kHz mono in the int16 range, as cdpam.load_audio makes it: (1, n) float32."""
    mono = with_channels(audio.samples, 1)
    if seconds is not None:
        mono = mono[: int(round(seconds * audio.sample_rate))]
    x = resample(mono, audio.sample_rate, CDPAM_RATE)[:, 0]
    return np.round(x.astype(np.float64) * 32768).astype(np.float32)[None]


def cdpam_embedding(model, x: np.ndarray, device: str = "cpu"):
    """cdpam's normalised acoustic embedding of one clip (1, n)."""
    import torch
    import torch.nn.functional as F

    with torch.inference_mode():
        _, acoustic, _ = model.base_encoder(torch.from_numpy(x).to(device).unsqueeze(1))
        return F.normalize(acoustic, dim=1)


def cdpam_distance(model, reference: np.ndarray, test: np.ndarray, device: str = "cpu") -> float:
    """The computation of ``cdpam.CDPAM.forward``: normalised acoustic embeddings, then the distance head."""
    return cdpam_head(model, cdpam_embedding(model, reference, device), cdpam_embedding(model, test, device))


def cdpam_head(model, ref, test) -> float:
    import torch

    with torch.inference_mode():
        return float(model.model_dist(ref, test).item())


@register("metric", "cdpam")
class CDPAM(Metric):
    """CDPAM perceptual distance (lower is better) and −10·log10(distance) in dB.

    A sample's coded versions share one reference: its embedding is computed once per
    batch (the encoder is nearly all of CDPAM's cost)."""

    Options = CDPAMOptions
    modality = "audio"
    lower_better = True
    columns = {"cdpam": pa.float64(), "cdpam_db": pa.float64()}

    def compute(self, references: list[Audio], tests: list[Audio]):
        model = load_cdpam().to(self.device)
        embedded: dict[int, object] = {}  # the rows of one sample share their reference object
        out = []
        for r, t in zip(references, tests):  # clips differ in length: one at a time
            key = id(r)
            if key not in embedded:
                embedded[key] = cdpam_embedding(model, cdpam_input(r, self.options.seconds), self.device)
            test = cdpam_embedding(model, cdpam_input(t, self.options.seconds), self.device)
            d = max(cdpam_head(model, embedded[key], test), 0.0)
            out.append({"cdpam": d, "cdpam_db": math.inf if d == 0 else -10 * math.log10(d)})
        return out
