"""Music source separation with Demucs, loaded through demucs' own pretrained loader.

``model`` is a Demucs name as ``demucs.pretrained.get_model`` takes it: ``hdemucs_mmi``
(Hybrid Demucs, v3) or ``htdemucs`` (Hybrid Transformer Demucs, v4, the model the study's
code actually ran), from the hub or demucs' remote repo, or from a local ``repo`` folder
of ``.th``/``.yaml`` files. The mixture is resampled (soxr) to the model's rate and
channels, normalised and separated as ``demucs.separate`` does (``apply_model`` with
``shifts``, ``overlap``, split into segments; the random shifts are seeded so runs
repeat), and each estimate is resampled back to the stem's rate, channels and length.

Scores are museval's BSS Eval v4 SDR (SiSEC 2018): SDR on 1 s windows with 1 s hop
(``museval.evaluate``), windows where a source is silent are undefined, and a track's SDR per
source is the median over its windows; computed without the distortion filters, which do not
change the SDR (``framewise_sdr``). Per row: ``sdr_<source>`` and
``score`` = their mean. Split level (``aggregate``): per source the median over tracks;
``sdr_median`` / ``sdr_mean`` = the mean over the four sources of the per-source median /
mean over tracks (the SiSEC/Demucs "All" figure is ``sdr_median``).
"""

from __future__ import annotations

import functools
import math
import random
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
from pydantic import Field, field_validator

from mpq.components import Asset, AssetUnavailable, Options, Task, mean_agreement, offline, offline_hint
from mpq.hub import BUILTIN_PREFIX, TorchHubCheckpoint, known_builtin, mpq_cache, weights_digest
from mpq.media import STEMS, Audio, fit_length, resample, with_channels
from mpq.registry import register
from mpq.storage import write_local

TINY = ("builtin:tiny-hdemucs", "builtin:tiny-htdemucs")


class SeparateOptions(Options):
    model: str = "htdemucs"  # a demucs model name (hdemucs_mmi, htdemucs, ...) or builtin:tiny-(h)hdemucs
    repo: str | None = None  # a local folder of demucs models, instead of the hub / remote repo
    shifts: int = Field(default=1, ge=0)
    overlap: float = Field(default=0.25, ge=0, lt=1)

    @field_validator("model")
    @classmethod
    def _known_builtin(cls, model: str) -> str:
        return known_builtin(model, TINY, "or a demucs model name")


def demucs_signature(name: str) -> str:
    return name.removeprefix(BUILTIN_PREFIX).replace("-", "_")  # demucs' local repo reads "a-b.th" as signature-checksum


def tiny_demucs(name: str) -> Path:
    """A tiny randomly initialised HDemucs / HTDemucs (demucs' own classes), saved in demucs'
    package format to a local repo folder in mpq's cache, for ``get_model(name, repo)``."""
    import torch

    repo = mpq_cache() / "models" / "demucs"
    sig = demucs_signature(name)
    path = repo / f"{sig}.th"
    if not path.exists():
        from demucs.hdemucs import HDemucs
        from demucs.htdemucs import HTDemucs

        torch.manual_seed(0)
        if sig == "tiny_hdemucs":
            model = HDemucs(sources=list(STEMS), channels=4, segment=4)  # demucs_unittest, shorter segments
        else:
            model = HTDemucs(sources=list(STEMS), channels=4, dconv_comp=2, t_layers=1, t_heads=2, segment=2)
        args, kwargs = model._init_args_kwargs
        package = {"klass": type(model), "args": args, "kwargs": kwargs, "state": model.state_dict(), "training_args": {}}
        repo.mkdir(parents=True, exist_ok=True)
        write_local(path, lambda tmp: torch.save(package, tmp))
    return repo


class DemucsModel(Asset):
    """A pretrained Demucs as ``get_model`` finds it: the bag's files on the Hugging Face hub
    (demucs >= 4.1 looks there first, into the HF cache), else its checkpoints in demucs' legacy
    remote repo, fetched by URL into torch's hub cache; or a name in a local ``repo`` folder."""

    kind = "checkpoint"

    def __init__(self, model: str, repo: str | None = None):
        super().__init__(f"demucs {model}")
        self.model, self.repo = model, repo

    @property
    def key(self) -> tuple:
        return ("demucs", self.model, self.repo)

    def legacy_checkpoints(self) -> list[TorchHubCheckpoint]:
        """The model's files in demucs' remote repo (its bag YAMLs and URL list ship in the wheel)."""
        import yaml
        from demucs.pretrained import REMOTE_ROOT, _parse_remote_files

        urls = _parse_remote_files(REMOTE_ROOT / "files.txt")
        bag = REMOTE_ROOT / f"{self.model}.yaml"
        sigs = yaml.safe_load(bag.read_text())["models"] if bag.exists() else [self.model] if self.model in urls else []
        return [TorchHubCheckpoint(f"{self.name} {sig}", urls[sig]) for sig in sigs if sig in urls]

    def hub_repo(self) -> tuple[str, str] | None:
        """(repo id, model name) where demucs' hub loader looks; None before demucs 4.1."""
        try:
            from demucs.hf import DEFAULT_NAMESPACE, hf_repo_name
        except ImportError:
            return None
        namespace, _, name = self.model.removeprefix("hf://").rpartition("/")
        return f"{namespace or DEFAULT_NAMESPACE}/{hf_repo_name(name)}", name

    def hub_files_cached(self) -> bool:
        """Whether the bag's YAML and every model file are in the Hugging Face cache."""
        import yaml
        from huggingface_hub import try_to_load_from_cache

        if (hub := self.hub_repo()) is None:
            return False
        repo_id, name = hub
        bag = try_to_load_from_cache(repo_id, f"{name}.yaml")
        if not isinstance(bag, str):
            return False
        sigs = yaml.safe_load(Path(bag).read_text())["models"]
        return all(isinstance(try_to_load_from_cache(repo_id, f"{sig}.safetensors"), str) for sig in sigs)

    def fetch(self) -> None:
        from demucs.pretrained import get_model

        try:  # demucs' own loader fills its own caches
            get_model(self.model, repo=Path(self.repo) if self.repo else None)
        except Exception as exc:  # urllib / hub errors, an unknown name
            raise offline_hint(self.kind, self.name, exc) from exc

    def check(self) -> None:
        if self.repo:
            from demucs.repo import AnyModelRepo, BagOnlyRepo, LocalRepo

            repo = Path(self.repo).expanduser()
            models = LocalRepo(repo) if repo.is_dir() else None
            if models is None or not AnyModelRepo(models, BagOnlyRepo(repo, models)).has_model(self.model):
                raise AssetUnavailable(f"demucs model {self.model!r} is not in the repo folder {str(repo)!r}")
            return
        legacy = self.legacy_checkpoints()
        if self.hub_files_cached() or (legacy and all(c.path.exists() for c in legacy)):
            return
        if offline():
            raise offline_hint(self.kind, self.name, FileNotFoundError("neither in the Hugging Face cache nor in torch's hub cache"))
        if hub := self.hub_repo():  # not cached: a small download tells whether the hub has it
            from huggingface_hub import hf_hub_download

            try:
                hf_hub_download(hub[0], f"{hub[1]}.yaml")
                return
            except Exception as exc:
                if not legacy:
                    raise offline_hint(self.kind, self.name, exc) from exc
        if not legacy:
            raise AssetUnavailable(f"{self.name}: no such model on the hub or in demucs' remote repo")
        for c in legacy:  # else reachable by URL is enough
            c.check()


@functools.cache
def bss_eval_module():
    """museval's BSS Eval implementation (``museval/metrics.py``, self-contained), imported by
    path: ``import museval`` imports musdb → stempeg, which refuses to load without an
    ffmpeg binary on PATH, and mpq needs none."""
    import importlib.util

    spec = importlib.util.find_spec("museval")
    path = Path(spec.origin).parent / "metrics.py"
    module_spec = importlib.util.spec_from_file_location("museval_metrics", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module


def framewise_sdr(reference: np.ndarray, estimate: np.ndarray, rate: int) -> np.ndarray:
    """BSS Eval v4 SDR (images version, time-invariant filters: what ``museval.evaluate``
    computes) of each source on 1 s windows with 1 s hop, (sources, windows); NaN in a window
    where any reference or estimated source is silent. BSS Eval splits the error (estimate −
    reference image) into spatial, interference and artifact parts with least-squares
    distortion filters; in this version the SDR divides the reference's energy by the energy
    of their sum, which is the whole error, so the filters (four 4096² solves a track for
    four stereo stems) change ISR, SIR and SAR but not the SDR (sigsep/sigsep-mus-eval#101).
    mpq reports only the SDR and computes it without them: the same values as museval's
    bss_eval to rounding (tests/test_audio.py), in milliseconds instead of about 6 CPU-seconds
    for a 1 s clip; museval still checks the inputs."""
    bss_eval_module().validate(reference, estimate)  # shapes; no source silent throughout (a ValueError)
    sources, n, channels = reference.shape
    # museval's framing: whole windows only, the tail dropped; one window over a shorter clip
    windows, size = (n // rate, rate) if rate < n else (1, n)
    sdr = np.empty((sources, windows))
    silent = np.zeros(windows, bool)  # per window: some source's channel sum is 0 throughout (museval's _any_source_silent)
    for j in range(sources):  # a source at a time: a 4-minute stereo track is 170 MB in float64
        ref, est = (x[j, : windows * size].reshape(windows, size, channels) for x in (reference, estimate))
        silent |= (ref.sum(axis=2) == 0).all(axis=1) | (est.sum(axis=2) == 0).all(axis=1)
        ref = ref.astype(np.float64)
        err = est - ref
        with np.errstate(divide="ignore", invalid="ignore"):
            # An error of exactly 0 gives +inf, as museval's own ratio does; its projections
            # leave rounding there (about 360 dB), which this leaves out.
            sdr[j] = 10 * np.log10(np.einsum("wtc,wtc->w", ref, ref) / np.einsum("wtc,wtc->w", err, err))
    sdr[:, silent] = np.nan
    return sdr


def median_sdr(reference: np.ndarray, estimate: np.ndarray, rate: int) -> list[float | None]:
    """Per source, the median of ``framewise_sdr`` over its defined windows (SiSEC 2018's
    track score; an exact window, +inf, counts as the best); None where none is defined."""
    out = []
    for frames in framewise_sdr(reference, estimate, rate):
        defined = frames[~np.isnan(frames)]
        out.append(float(np.median(defined)) if defined.size else None)
    return out


@register("task", "separate")
class Separate(Task):
    """Demucs music source separation; BSS Eval v4 SDR per source (median over 1 s frames)."""

    Options = SeparateOptions
    modality = "audio"
    columns = {
        "score": pa.float64(), **{f"sdr_{s}": pa.float64() for s in STEMS},
        "sdr_vs_clean": pa.float64(),  # written by `agreement`
    }

    def _get_model(self):
        from demucs.pretrained import get_model

        name, repo = self.options.model, self.options.repo
        if name in TINY:
            repo, name = tiny_demucs(name), demucs_signature(name)
        try:
            return get_model(name, repo=Path(repo) if repo else None)
        except Exception as exc:  # urllib / hub errors, a missing signature
            raise offline_hint("checkpoint", f"demucs {name}", exc) from exc

    def assets(self):
        if self.options.model in TINY:
            return []  # written by mpq itself, offline
        return [DemucsModel(self.options.model, self.options.repo)]

    def load(self) -> None:
        self.model = self._get_model().to(self.device).eval()
        if self.options.model in TINY:
            self.pipeline_check = "tiny random Demucs: separations and SDR mean nothing"
        self.model_id = self.options.model
        # Demucs names carry no revision: the weights' own digest says which ones ran.
        self.model_revision = f"{type(getattr(self.model, 'models', [self.model])[0]).__name__} {weights_digest(self.model)}"

    @classmethod
    def aggregate(cls, rows):
        """Per source the median over tracks (``sdr_<source>``); ``sdr_median`` and ``sdr_mean``
        average the per-source medians and means over the four sources."""
        medians, means = {}, {}
        for s in STEMS:
            col = rows[f"sdr_{s}"].drop_nulls().drop_nans()
            if col.len():
                medians[s], means[s] = float(col.median()), float(col.mean())
        out = {"sdr_median": float(np.mean(list(medians.values()))) if medians else None,
               "sdr_mean": float(np.mean(list(means.values()))) if means else None}
        return out | {f"sdr_{s}": medians.get(s) for s in STEMS} | mean_agreement(rows)

    @classmethod
    def sums(cls, rows):
        return None  # medians: not a function of sums

    def agreement(self, output, reference):
        """``sdr_vs_clean``: the SDR of this separation against the separation of the
        uncompressed input, mean over sources: 10·log10(Σ ref² / Σ (ref − est)²) over the whole
        track (the MDX challenges' SDR; BSS Eval's projections would cost more than the
        separation itself), +inf when identical. ``agreement``: its energy fraction
        1 / (1 + 10^(−SDR/10)), 1 when identical, 0.5 at 0 dB."""
        sdr = []
        for name, ref in reference["_stems"].items():
            est = fit_length(output["_stems"][name], ref.shape[0])
            signal, noise = float(np.sum(ref.astype(np.float64) ** 2)), float(np.sum((ref.astype(np.float64) - est) ** 2))
            if signal > 0:
                sdr.append(math.inf if noise == 0 else 10 * math.log10(signal / noise))
        if not sdr:
            return {"sdr_vs_clean": None, "agreement": None}
        mean = float(np.mean(sdr))
        # 1 / (1 + 10^(−SDR/10)) as a tanh, which neither overflows at −1000 dB nor fails at ±inf
        return {"sdr_vs_clean": mean, "agreement": 0.5 * (1.0 + math.tanh(mean * math.log(10) / 20))}

    def separate(self, mix: Audio) -> dict[str, np.ndarray]:
        """Estimates per source at the model's rate: (n, model channels) float32."""
        import torch
        from demucs.apply import apply_model

        rate, channels = self.model.samplerate, self.model.audio_channels
        x = with_channels(resample(mix.samples, mix.sample_rate, rate), channels)
        wav = torch.from_numpy(np.ascontiguousarray(x.T))
        ref = wav.mean(0)
        mean, std = ref.mean(), ref.std().clamp_min(1e-8)  # silent input: no division by zero
        random.seed(0)  # apply_model's random shifts: the same every run
        with torch.inference_mode():
            est = apply_model(self.model, ((wav - mean) / std)[None], shifts=self.options.shifts, split=True,
                              overlap=self.options.overlap, device=self.device)[0]
        est = est * std + mean
        return {name: est[i].cpu().numpy().T for i, name in enumerate(self.model.sources)}

    def predict(self, media: list[Any], targets: list[Any]) -> list[dict[str, Any]]:
        rows = []
        for mix, stems in zip(media, targets):
            est = self.separate(mix)
            row: dict[str, Any] = {"label": None, "prediction": None, "correct": None, "score": None, "_stems": est}
            if stems:
                names = [s for s in STEMS if s in stems and s in est]
                rate = stems[names[0]].sample_rate
                refs = np.stack([stems[s].samples for s in names])
                ests = np.stack([
                    fit_length(with_channels(resample(est[s], self.model.samplerate, rate), stems[s].channels), stems[s].num_samples)
                    for s in names
                ])
                sdr = dict(zip(names, median_sdr(refs, ests, rate)))
                row.update({f"sdr_{s}": sdr.get(s) for s in STEMS})
                defined = [v for v in sdr.values() if v is not None and math.isfinite(v)]
                row["score"] = float(np.mean(defined)) if defined else None
            rows.append(row)
        return rows
