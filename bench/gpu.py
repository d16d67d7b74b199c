"""The GPU path measured: each model stage's samples per second and the fraction of time the
GPU is busy, against the raw model in the same run, and the serial engine end to end against
its slowest stage alone.

    uv run python bench/gpu.py                   # on a GPU machine: a few minutes (results in out/gpu-bench)
    uv run python bench/gpu.py --quick           # tiny models on the CPU: a sanity check (minutes on 2 cores)

Models are the real architectures with random weights, built from their transformers
configs (ViT-base, SegFormer-b0, Whisper small and medium, EnCodec 48 kHz), written with
``save_pretrained`` and loaded by mpq's own tasks through ``from_pretrained``; LPIPS is
AlexNet with a random backbone (lpips' ``pnet_rand``). No hub access.

For each stage and precision (fp32, bf16) two things run over the same inputs:

- raw: the loaded model alone on inputs already on the device, one batch per call (the
  ceiling: what the model can do at that batch size);
- mpq: mpq's stage object as the engines run it (``Predict`` on a batch of working rows,
  ``Measure`` on ``metric_batch_size`` rows, ``Encode`` row by row), preprocessing and
  result rows included.

The table gives samples/s of each, mpq's as a ratio of raw's, and the GPU busy fraction:
the time covered by at least one CUDA kernel over the wall time of a profiled pass
(torch.profiler's kernel records, merged), after a warm-up, so "once started". NVML's own
utilisation, sampled every 20 ms during the timed pass, is given beside it. Whisper
generates ``--tokens`` tokens per clip: random weights practically never end early (the
raw output's shape is in the row's note).

The codec stage: neural codecs run their networks on a GPU where there is one (under Ray in
a GPU actor pool); each codec row gives mpq's ``Encode`` on the device against mpq's
``Encode`` on the CPU, the baseline, in the same run (ratio > 1: the GPU path is faster).
EnCodec 48 kHz (encode and decode, a clip at a time; raw: the batch through the model on the
device) and CompressAI's mbt2018 at quality 1 with random weights, the study's image codec:
its transforms on the GPU in one batch, its autoregressive entropy coding on the CPU (mpq's
GPU path), and beside it the whole model on the GPU, CompressAI's own GPU mode, which it
warns against. The CPU baseline runs one image at a time with torch's default threads;
the note gives the transforms' share of its time, the most the GPU can take off it.
Only this case: ``--only mbt2018`` (about a minute on a GPU machine; ``--quick``: 64 × 64
images, seconds).

End to end: mpq's serial engine (``run_job``) on a synthetic image job (a folder of PNGs,
JPEG at three settings, ViT-base classification, PSNR and LPIPS) on the GPU, as samples/s
after start-up and as a fraction of its slowest stage alone (bench/throughput.py's stage
timing). Ray is not part of this: its wheel does not fit the device machine's transfer limit.

Results go to OUT/gpu.json and OUT/gpu.md after every measurement, so a run cut short keeps
what it measured; ``--budget`` seconds stops starting new measurements.
"""

from __future__ import annotations

import argparse
import copy
import datetime
import gc
import json
import os
import platform
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/throughput.py's stage timing

PRECISIONS = ("fp32", "bf16")


# --- timing and GPU busy ----------------------------------------------------------------


class NvmlSampler:
    """Mean NVML GPU utilisation (percent of time a kernel ran, per the driver's own sampling)."""

    def __init__(self, interval: float = 0.02):
        self.interval, self.values, self.stop = interval, [], threading.Event()
        try:
            import pynvml

            pynvml.nvmlInit()
            self.handle, self.nvml = pynvml.nvmlDeviceGetHandleByIndex(0), pynvml
        except Exception:  # no NVML (CPU machine, or no nvidia-ml-py): no figure
            self.handle = None

    def __enter__(self):
        if self.handle is not None:
            self.thread = threading.Thread(target=self._run, daemon=True)
            self.thread.start()
        return self

    def _run(self):
        while not self.stop.is_set():
            self.values.append(self.nvml.nvmlDeviceGetUtilizationRates(self.handle).gpu)
            self.stop.wait(self.interval)

    def __exit__(self, *exc):
        self.stop.set()
        if self.handle is not None:
            self.thread.join()

    @property
    def mean(self) -> float | None:
        return float(np.mean(self.values)) / 100 if self.values else None


def sync(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()


def kernel_busy(trace_file: str, first_to_last: bool = False) -> tuple[float, float]:
    """(time covered by at least one kernel, window) in seconds, from a chrome trace; the
    window is the profiled span, or the first kernel's start to the last one's end."""
    events = json.loads(Path(trace_file).read_text())["traceEvents"]
    spans = sorted((e["ts"], e["ts"] + e.get("dur", 0)) for e in events if e.get("cat") == "kernel")
    covered, end = 0.0, -np.inf
    for s, e in spans:
        if e > end:
            covered += e - max(s, end)
            end = e
    if first_to_last:
        window = (spans[-1][1] - spans[0][0]) if spans else 0.0
        return covered / 1e6, window / 1e6
    return covered / 1e6, float("nan")


def profiled(fn: Callable[[], Any], device: str, first_to_last: bool = False) -> tuple[float | None, float]:
    """(GPU busy fraction, wall seconds) of one call of ``fn`` under torch.profiler."""
    if not device.startswith("cuda"):
        start = time.perf_counter()
        fn()
        return None, time.perf_counter() - start
    from torch.profiler import ProfilerActivity, profile

    sync(device)
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        start = time.perf_counter()
        fn()
        sync(device)
        wall = time.perf_counter() - start
    with tempfile.NamedTemporaryFile(suffix=".json") as f:
        prof.export_chrome_trace(f.name)
        covered, window = kernel_busy(f.name, first_to_last)
    return covered / (window if first_to_last else wall), wall


def measure(fn: Callable[[], Any], samples: int, device: str, min_seconds: float) -> dict[str, Any]:
    """Samples/s of repeated calls of ``fn`` (each doing ``samples``) after one warm-up call,
    NVML utilisation meanwhile, then the GPU busy fraction of a profiled pass."""
    fn()
    sync(device)
    calls, start = 0, time.perf_counter()
    with NvmlSampler() as nvml:
        while calls < 2 or time.perf_counter() - start < min_seconds:
            fn()
            calls += 1
        sync(device)
        seconds = time.perf_counter() - start
    per_call = seconds / calls
    reps = max(1, min(calls, round(1.0 / per_call)))  # profile about a second of calls
    busy, wall = profiled(lambda: [fn() for _ in range(reps)], device)
    return {
        "sps": samples * calls / seconds, "calls": calls, "seconds": seconds, "busy": busy,
        "nvml_util": nvml.mean, "profiled_sps": samples * reps / wall,
    }


# --- random models in HF format -----------------------------------------------------------


def save(model, processor, path: Path) -> str:
    model.save_pretrained(path)
    if processor is not None:
        processor.save_pretrained(path)
    return str(path)


def build_vit(path: Path, quick: bool) -> str:
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    labels = {i: f"class{i}" for i in range(1000)}
    size = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64) if quick else {}
    config = ViTConfig(**size, num_labels=1000, id2label=labels, label2id={v: k for k, v in labels.items()})  # ViT-base/16, 224
    return save(ViTForImageClassification(config), ViTImageProcessor(), path)


def build_segformer(path: Path, quick: bool) -> str:
    from transformers import SegformerConfig, SegformerForSemanticSegmentation, SegformerImageProcessor

    size = dict(hidden_sizes=[8, 16, 32, 64], decoder_hidden_size=32) if quick else {}  # default: mit-b0
    config = SegformerConfig(**size, num_labels=150)
    processor = SegformerImageProcessor(size={"height": 512, "width": 512}, do_reduce_labels=True)  # as ADE20k's b0
    return save(SegformerForSemanticSegmentation(config), processor, path)


WHISPER = {  # the released models' dimensions
    "small": dict(d_model=768, encoder_layers=12, decoder_layers=12, encoder_attention_heads=12,
                  decoder_attention_heads=12, encoder_ffn_dim=3072, decoder_ffn_dim=3072),
    "medium": dict(d_model=1024, encoder_layers=24, decoder_layers=24, encoder_attention_heads=16,
                   decoder_attention_heads=16, encoder_ffn_dim=4096, decoder_ffn_dim=4096),
    "quick": dict(d_model=32, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2,
                  decoder_attention_heads=2, encoder_ffn_dim=64, decoder_ffn_dim=64),
}
WHISPER_VOCAB = 51865  # multilingual Whisper's vocabulary: the output layer's real size


def build_whisper(path: Path, size: str, device: str) -> str:
    """A Whisper of the released dimensions and vocabulary size with random weights, and a
    byte-level tokenizer padded to that vocabulary (mpq's tiny_whisper, at full size)."""
    import torch
    from transformers import WhisperForConditionalGeneration

    from mpq.tasks.asr import random_whisper_parts

    config, generation, processor = random_whisper_parts(WHISPER[size], WHISPER_VOCAB, max_target_positions=448, max_length=448)
    with torch.device(device):  # random init on the GPU: seconds, not a minute
        model = WhisperForConditionalGeneration(config)
    model.generation_config = generation
    return save(model, processor, path)


def build_encodec(path: Path, quick: bool) -> str:
    from transformers import EncodecConfig, EncodecModel

    size = dict(hidden_size=16, num_filters=4, num_lstm_layers=1) if quick else {}
    config = EncodecConfig(  # facebook/encodec_48khz's configuration
        **size, sampling_rate=48000, audio_channels=2, normalize=True, chunk_length_s=1.0, overlap=0.01,
        target_bandwidths=[3.0, 6.0, 12.0, 24.0], use_causal_conv=False, norm_type="time_group_norm",
    )
    return save(EncodecModel(config), None, path)


# --- inputs -------------------------------------------------------------------------------


def smooth_image(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A photo-like image: bicubic-upsampled coarse noise plus a little fine noise (pure
    noise would make every codec and model case atypical)."""
    from PIL import Image

    coarse = rng.integers(0, 256, (max(2, h // 32), max(2, w // 32), 3), dtype=np.uint8)
    img = np.asarray(Image.fromarray(coarse).resize((w, h), Image.BICUBIC), dtype=np.int16)
    return np.clip(img + rng.integers(-8, 9, img.shape), 0, 255).astype(np.uint8)


def noisy(rng: np.random.Generator, img: np.ndarray, sigma: float) -> np.ndarray:
    return np.clip(img + rng.normal(0, sigma, img.shape), 0, 255).astype(np.uint8)


def audio(rng: np.random.Generator, seconds: float, rate: int, channels: int):
    from mpq.media import Audio

    t = np.arange(int(seconds * rate)) / rate
    tone = 0.3 * np.sin(2 * np.pi * 220 * t)[:, None] + 0.05 * rng.standard_normal((t.size, channels))
    return Audio(tone.astype(np.float32), rate)


# --- one job for the stage objects ---------------------------------------------------------


def job_spec(precision: str, folder: str, media: str = "image", **parts):
    """The resolved job the stage objects take."""
    from mpq.job import resolve
    from mpq.spec import parse_job

    return resolve(parse_job({
        "name": "gpu-bench", "datasets": [{"name": "bench", "source": {"folder": folder, "media": media}}],
        "resources": {"precision": precision, "metric_batch_size": parts.pop("metric_batch_size", 16)}, **parts,
    }))


def check_rows(rows: list[dict], key: str | None = None) -> None:
    """The stage ran without error rows: a stage that fails per sample must not pass for fast."""
    for row in rows:
        err = row.get("error") or (row.get("results", {}).get(key, {}).get("error") if key else None)
        if err:
            raise RuntimeError(f"mpq stage produced an error row: {err}")


def predict_rows(media: list, targets: list, task: str) -> list[dict]:
    """Working rows for ``Predict``: uncompressed (baseline) rows, each its own sample's reference,
    so the stage runs the model once per row and scores no agreement."""
    from mpq.media import Image
    from mpq.results import BASELINE

    media = [Image(m) if isinstance(m, np.ndarray) else m for m in media]  # Predict takes media types
    return [{"dataset": "bench", "sample_id": str(i), "codec": BASELINE, "setting": "", "decoded": m, "original": m,
             "target": t, "error": None, "tasks": [task]} for i, (m, t) in enumerate(zip(media, targets))]


def coded_rows(encode, template: list[dict]) -> Callable[[], list[dict]]:
    """A call of mpq's Encode stage on fresh copies of the rows, checked for error rows."""
    def run():
        rows = [dict(r) for r in template]
        encode(rows)
        check_rows(rows)
        return rows
    return run


def release() -> None:
    gc.collect()
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except ImportError:
        pass


# --- the cases ------------------------------------------------------------------------------


class Bench:
    def __init__(self, args):
        self.args, self.quick, self.device = args, args.quick, args.device
        self.min_seconds = 0.2 if args.quick else args.min_seconds
        self.work = Path(tempfile.mkdtemp(prefix="mpq-gpu-"))
        self.models: dict[str, str] = {}
        self.rng = np.random.default_rng(0)
        self.results: list[dict] = []
        self.start = time.monotonic()

    def model(self, name: str, build: Callable[[Path], str]) -> str:
        if name not in self.models:
            t = time.perf_counter()
            self.models[name] = build(self.work / "models" / name)
            print(f"  built {name} in {time.perf_counter() - t:.1f} s", flush=True)
            release()
        return self.models[name]

    def n(self, full: int, quick: int) -> int:
        return quick if self.quick else full

    def pair(self, stage: str, precision: str, batch: int, raw: dict, mpq: dict, note: str = "", raw_label: str = "raw") -> None:
        self.results.append({
            "stage": stage, "precision": precision, "batch": batch, "raw_label": raw_label,
            "raw": raw, "mpq": mpq, "ratio": mpq["sps"] / raw["sps"] if raw and mpq else None, "note": note,
        })

    # Image classification: ViT-base/16 at 224, batch of 64 photos of 480 × 640.
    def classify(self, precision: str) -> None:
        import torch

        from mpq.engine.stages import Predict

        path = self.model("vit-base", lambda p: build_vit(p, self.quick))
        b = self.n(64, 4)
        job = job_spec(precision, str(self.work), tasks=[{"name": "classify", "model": path, "batch_size": b}])
        predict = Predict(job, "classify", self.device)
        predict.load()
        h, w = (480, 640) if not self.quick else (64, 80)
        images = [smooth_image(self.rng, h, w) for _ in range(b)]
        rows = predict_rows(images, ["class1"] * b, "classify")
        model, task = predict.task.model, predict.task
        pixels = task.processor(images=images, return_tensors="pt")["pixel_values"].to(self.device, dtype=task.dtype)

        def raw():
            with torch.inference_mode():
                return model(pixel_values=pixels).logits.argmax(-1)

        predict(rows)
        check_rows(rows, "classify")
        self.pair("ViT-base/16 classify", precision, b, measure(raw, b, self.device, self.min_seconds),
                  measure(lambda: predict(rows), b, self.device, self.min_seconds))

    # Semantic segmentation: SegFormer-b0 at 512 × 512, 16 images of 512 × 683 with label maps (ADE20k's shape).
    def segment(self, precision: str) -> None:
        import torch

        from mpq.engine.stages import Predict

        path = self.model("segformer-b0", lambda p: build_segformer(p, self.quick))
        b = self.n(16, 2)
        job = job_spec(precision, str(self.work), tasks=[{"name": "segment", "model": path, "batch_size": b}])
        predict = Predict(job, "segment", self.device)
        predict.load()
        h, w = (512, 683) if not self.quick else (64, 80)
        images = [smooth_image(self.rng, h, w) for _ in range(b)]
        labels = [self.rng.integers(0, 151, (h, w), dtype=np.uint8) for _ in range(b)]
        rows = predict_rows(images, labels, "segment")
        model, task = predict.task.model, predict.task
        pixels = task.processor(images=images, return_tensors="pt")["pixel_values"].to(self.device, dtype=task.dtype)

        def raw():
            with torch.inference_mode():
                return model(pixel_values=pixels).logits

        predict(rows)
        check_rows(rows, "segment")
        self.pair("SegFormer-b0 segment", precision, b, measure(raw, b, self.device, self.min_seconds),
                  measure(lambda: predict(rows), b, self.device, self.min_seconds),
                  note="mpq: upsampling to the label map, argmax and IoU counts per image included")

    # Speech recognition: Whisper, a batch of clips of 10 s, exactly `tokens` tokens generated.
    def asr(self, precision: str, size: str, batch: int = 16) -> None:
        import torch

        from mpq.engine.stages import Predict

        build_size = "quick" if self.quick else size
        path = self.model(f"whisper-{size}", lambda p: build_whisper(p, build_size, self.device))
        b, tokens = self.n(batch, 2), self.n(self.args.tokens, 4)
        job = job_spec(precision, str(self.work), "audio",
                       tasks=[{"name": "asr", "model": path, "batch_size": b, "max_new_tokens": tokens}])
        predict = Predict(job, "asr", self.device)
        predict.load()
        clips = [audio(self.rng, self.n(10, 2), 16000, 1) for _ in range(b)]
        rows = predict_rows(clips, ["the quick brown fox"] * b, "asr")
        model, task = predict.task.model, predict.task
        features = task.processor.feature_extractor([c.samples[:, 0] for c in clips], sampling_rate=16000,
                                                    return_tensors="pt")["input_features"].to(self.device, dtype=task.dtype)

        def raw():
            with torch.inference_mode():
                return model.generate(features, language="en", task="transcribe", max_new_tokens=tokens)

        out = raw()
        predict(rows)
        check_rows(rows, "asr")
        self.pair(f"Whisper-{size} asr", precision, b, measure(raw, b, self.device, self.min_seconds),
                  measure(lambda: predict(rows), b, self.device, self.min_seconds),
                  note=f"{tokens} tokens generated (raw output {tuple(out.shape)})")

    # LPIPS (AlexNet, random backbone): 16 references of 512 × 768, 5 coded versions each, batches of 16 rows.
    def lpips(self, precision: str) -> None:
        if precision != "fp32":
            return  # metrics always run in fp32 (Measure): a bf16 row would measure nothing mpq does
        import torch
        from lpips.lpips import spatial_average

        from mpq.engine.stages import Measure
        from mpq.hub import to_device
        from mpq.media import Image
        from mpq.metrics.lpips import features, load_lpips, scaled

        versions, refs = 5, self.n(16, 2)
        job = job_spec(precision, str(self.work), metrics=[{"name": "lpips", "backbone": "random"}])
        measure_stage = Measure(job, self.device)
        h, w = (512, 768) if not self.quick else (64, 80)
        originals = [smooth_image(self.rng, h, w) for _ in range(refs)]
        rows = [
            {"dataset": "bench", "sample_id": str(i), "codec": "jpeg", "setting": k, "original": Image(o),
             "decoded": Image(noisy(self.rng, o, 2 + 3 * k)), "error": None}
            for i, o in enumerate(originals) for k in range(versions)
        ]
        batch = job.spec.resources.metric_batch_size
        batches = [rows[i : i + batch] for i in range(0, len(rows), batch)]

        def mpq():
            for rs in batches:
                measure_stage(rs)

        mpq()
        check_rows(rows)
        net = load_lpips("alex", True).to(self.device)
        def stage(images):  # NHWC on the device, scaled
            return scaled(torch.stack(to_device(images, self.device)))

        staged = [(stage([o]), stage([r["decoded"].pixels for r in rows[i * versions : (i + 1) * versions]])) for i, o in enumerate(originals)]

        def raw():  # the same computation as mpq's (reference features once per sample), on staged tensors
            with torch.inference_mode():
                return [sum(spatial_average(lin((r - t) ** 2)) for lin, r, t in zip(net.lins, features(net, ref), features(net, tests)))
                        for ref, tests in staged]

        self.pair("LPIPS-Alex (random backbone) metric", precision, batch, measure(raw, len(rows), self.device, self.min_seconds),
                  measure(mpq, len(rows), self.device, self.min_seconds),
                  note=f"{refs} references × {versions} versions; raw: all inputs staged on the GPU")

    # Neural codec: EnCodec 48 kHz stereo at 6 kbps, 8 clips of 5 s.
    def codec(self, precision: str) -> None:
        import torch
        from transformers import EncodecModel

        from mpq.engine.stages import Encode

        path = self.model("encodec-48khz", lambda p: build_encodec(p, self.quick))
        b = self.n(8, 2)
        job = job_spec(precision, str(self.work), "audio", codecs=[{"name": "encodec_48khz", "model": path, "settings": [6.0]}])
        clips = [audio(self.rng, self.n(5, 1), 48000, 2) for _ in range(b)]
        template = [{"dataset": "bench", "sample_id": str(i), "codec": "encodec_48khz", "setting": 6.0, "original": c,
                     "conversion": None, "error": None, "tasks": []} for i, c in enumerate(clips)]
        dtype = torch.bfloat16 if precision == "bf16" else torch.float32
        x = torch.from_numpy(np.stack([c.samples.T for c in clips]))

        def forward(model, inputs):
            def run():
                with torch.inference_mode():
                    return model(input_values=inputs, bandwidth=6.0).audio_values
            return run

        if precision == "fp32":  # mpq's codec stage ignores the job's precision: measured once, on each device
            cpu = measure(coded_rows(Encode(job, device="cpu"), template), b, "cpu", self.min_seconds)
            self.pair("EnCodec-48kHz codec: mpq on the device", "fp32", b, cpu,
                      measure(coded_rows(Encode(job, device=self.device), template), b, self.device, self.min_seconds),
                      raw_label="baseline: mpq on the CPU", note="encode + decode at 6 kbps, a clip at a time (Encode)")
        base = EncodecModel.from_pretrained(path).eval()
        gpu = copy.deepcopy(base).to(self.device, dtype=dtype)
        self.pair("EnCodec-48kHz forward on the device", precision, b,
                  measure(forward(gpu, x.to(self.device, dtype=dtype)), b, self.device, self.min_seconds), None,
                  raw_label=f"raw on {self.device}", note="encode + decode at 6 kbps, the batch at once")

    # Neural image codec: CompressAI mbt2018 (the study's; autoregressive), quality 1, random weights.
    def image_codec(self) -> None:
        import torch

        from mpq.codecs.learned import load_zoo_model
        from mpq.engine.stages import Encode
        from mpq.media import Image

        b, side = self.n(self.args.codec_images, 2), self.n(256, 64)
        job = job_spec("fp32", str(self.work), codecs=[{"name": "mbt2018", "settings": [1], "pretrained": False}])
        images = [smooth_image(self.rng, side, side) for _ in range(b)]
        template = [{"dataset": "bench", "sample_id": str(i), "codec": "mbt2018", "setting": 1, "original": Image(im),
                     "conversion": None, "error": None, "tasks": []} for i, im in enumerate(images)]
        cpu = measure(coded_rows(Encode(job, device="cpu"), template), b, "cpu", self.min_seconds)
        net = load_zoo_model("mbt2018", 1, "mse", False)  # the CPU path's model (random weights: one draw per process)
        x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float().div(255)

        def transforms(model, inputs):
            def run():
                with torch.inference_mode():
                    return model.g_s(torch.round(model.g_a(inputs)))
            return run

        share = cpu["sps"] / measure(transforms(net, x), b, "cpu", self.min_seconds)["sps"]
        size = f"{b} images of {side} × {side}, quality 1, encode + decode"
        self.pair("MBT2018 codec: mpq's GPU path", "fp32", b, cpu,
                  measure(coded_rows(Encode(job, device=self.device, batch=b), template), b, self.device, self.min_seconds),
                  raw_label="baseline: mpq on the CPU (an image at a time)",
                  note=f"{size}; transforms on the device in one batch, entropy coding (context model, rANS) on the CPU; "
                       f"the transforms are {share:.0%} of the CPU path's time")
        whole = copy.deepcopy(net).to(self.device)
        xd = x.to(self.device)

        def compressai_gpu():
            import warnings

            with torch.inference_mode(), warnings.catch_warnings():
                warnings.simplefilter("ignore")  # CompressAI's warning against exactly this
                out = whole.compress(xd)
                return whole.decompress(out["strings"], out["shape"])

        stage = "MBT2018: the whole model on the device (CompressAI's GPU mode, not mpq's)"
        try:  # CompressAI 1.2.8's decoder adds its CPU symbols to the device's means: it may fail there
            whole_gpu = measure(compressai_gpu, b, self.device, self.min_seconds)
        except Exception as exc:
            self.results.append({"stage": stage, "error": f"{type(exc).__name__}: {str(exc)[:300]}"})
            return
        self.pair(stage, "fp32", b, cpu, whole_gpu, raw_label="baseline: mpq on the CPU",
                  note=f"{size}; the autoregressive loop on the device too")

    # End to end: mpq's serial engine on a synthetic image job, against its slowest stage alone.
    def end_to_end(self, precision: str) -> None:
        from throughput import child_stages

        from mpq.runner import run_job
        from mpq.spec import parse_job

        n = self.n(self.args.e2e_samples, 3)
        folder = self.work / "e2e-images"
        if not folder.exists():
            folder.mkdir()
            from PIL import Image

            h, w = (480, 640) if not self.quick else (64, 80)
            for i in range(n):
                Image.fromarray(smooth_image(self.rng, h, w)).save(folder / f"img{i:04d}.png")
        path = self.model("vit-base", lambda p: build_vit(p, self.quick))
        job = {
            "name": "gpu-e2e", "datasets": [{"name": "synthetic", "source": {"folder": str(folder)}}],
            "codecs": [{"name": "jpeg", "settings": [10, 50, 90]}],
            "tasks": [{"name": "classify", "model": path, "batch_size": 16}],
            "metrics": ["psnr", {"name": "lpips", "backbone": "random"}],
            "resources": {"precision": precision},
        }
        out = self.work / f"e2e-{precision}"
        with NvmlSampler() as nvml:
            stats = run_job(parse_job(job), str(out / "timed"), engine="serial", progress=False)
        if stats.errors:
            raise RuntimeError(f"end-to-end run wrote {stats.errors} error rows")
        busy, _ = profiled(lambda: run_job(parse_job(job), str(out / "profiled"), engine="serial", progress=False),
                           self.device, first_to_last=True)
        stages = child_stages(job)
        slowest = min(stages, key=stages.get)
        steady = stats.samples / max(stats.seconds - stats.startup_seconds, 1e-9)
        self.results.append({
            "stage": "end to end (serial engine)", "precision": precision, "samples": stats.samples, "rows": stats.written,
            "seconds": stats.seconds, "startup": stats.startup_seconds, "sps": stats.samples / stats.seconds,
            "steady_sps": steady, "busy": busy, "nvml_util": nvml.mean, "stages": stages, "slowest": slowest,
            "of_slowest": steady / stages[slowest], "bound": 1 / sum(1 / s for s in stages.values()),
        })

    def plan(self) -> list[tuple[str, Callable[[], None]]]:
        cases = []
        for p in self.args.precisions:
            cases += [(f"classify {p}", lambda p=p: self.classify(p)), (f"segment {p}", lambda p=p: self.segment(p))]
        for p in self.args.precisions:
            cases += [(f"whisper-small {p} batch {b}", lambda p=p, b=b: self.asr(p, "small", b)) for b in self.args.asr_batches]
            cases += [(f"lpips {p}", lambda p=p: self.lpips(p))]
        cases += [(f"codec {p}", lambda p=p: self.codec(p)) for p in self.args.precisions]
        cases += [("mbt2018 codec", self.image_codec)]
        cases += [(f"end to end {p}", lambda p=p: self.end_to_end(p)) for p in self.args.precisions]
        if not self.quick:  # at quick sizes it is whisper-small again
            cases += [(f"whisper-medium {p} batch {b}", lambda p=p, b=b: self.asr(p, "medium", b))
                      for p in self.args.precisions for b in self.args.asr_batches]
        only = self.args.only
        return [(name, fn) for name, fn in cases if not only or any(o in name for o in only)]

    def run(self) -> None:
        for name, fn in self.plan():
            if time.monotonic() - self.start > self.args.budget:
                self.results.append({"stage": name, "skipped": f"budget of {self.args.budget:.0f} s spent"})
                continue
            print(f"{name} ...", flush=True)
            t = time.perf_counter()
            try:
                fn()
            except Exception as exc:
                import traceback

                traceback.print_exc()
                self.results.append({"stage": name, "error": f"{type(exc).__name__}: {str(exc)[:300]}"})
            print(f"  {time.perf_counter() - t:.1f} s", flush=True)
            release()
            self.write()

    # --- report ---

    def environment(self) -> dict[str, Any]:
        import torch
        import transformers

        env = {"date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"), "device": self.device,
               "torch": torch.__version__, "transformers": transformers.__version__, "python": platform.python_version(),
               "cpus": os.cpu_count(), "quick": self.quick, "command": " ".join(sys.argv)}
        if self.device.startswith("cuda"):
            env["card"] = torch.cuda.get_device_name(0)
            try:
                import pynvml

                pynvml.nvmlInit()
                env["driver"] = pynvml.nvmlSystemGetDriverVersion()
            except Exception:
                pass
        return env

    def write(self) -> None:
        out = Path(self.args.out)
        out.mkdir(parents=True, exist_ok=True)
        report = {"environment": self.environment(), "results": self.results}
        (out / "gpu.json").write_text(json.dumps(report, indent=1, default=str))
        (out / "gpu.md").write_text(markdown(report))


def pct(x: float | None) -> str:
    return "–" if x is None or x != x else f"{100 * x:.0f} %"


def num(x: float | None) -> str:
    return "–" if x is None else f"{x:.1f}" if x >= 10 else f"{x:.2f}"


def markdown(report: dict) -> str:
    env = report["environment"]
    lines = [
        f"{env.get('card', env['device'])}, driver {env.get('driver', '–')}, {env['cpus']} CPUs; torch {env['torch']}, "
        f"transformers {env['transformers']}, Python {env['python']}; {env['date']}",
        f"command: `{env['command']}`", "",
        "| stage | precision | batch | raw samples/s | raw GPU busy (NVML) | mpq samples/s | mpq GPU busy (NVML) | mpq / raw | note |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    e2e = []
    for r in report["results"]:
        if "skipped" in r or "error" in r:
            why = " ".join((r.get("skipped") or r.get("error")).split())  # one table line
            lines.append(f"| {r['stage']} | | | | | | | | {why} |")
        elif "raw" in r:
            raw, mpq = r["raw"], r["mpq"]
            cols = [f"{r['stage']}", r["precision"], str(r["batch"])]
            for m in (raw, mpq):
                cols += ["–", "–"] if not m else [num(m["sps"]), f"{pct(m['busy'])} ({pct(m['nvml_util'])})"]
            ratio = "–" if r["ratio"] is None else f"{r['ratio']:.2f}"
            note = "; ".join(filter(None, [r["raw_label"] if r["raw_label"] != "raw" else "", r["note"]]))
            lines.append("| " + " | ".join([*cols, ratio, note]) + " |")
        else:
            e2e.append(r)
    for r in e2e:
        stages = ", ".join(f"{k} {num(v)}" for k, v in r["stages"].items())
        lines += [
            "", f"End to end, serial engine, {r['precision']}: {r['samples']} samples ({r['rows']} rows) in {r['seconds']:.1f} s, "
            f"start-up {r['startup']:.1f} s; {num(r['steady_sps'])} samples/s after start-up = {pct(r['of_slowest'])} of the slowest "
            f"stage alone ({r['slowest']}), {pct(r['steady_sps'] / r['bound'])} of all stages one after another; "
            f"GPU busy {pct(r['busy'])} from first to last kernel (NVML {pct(r['nvml_util'])} over the whole run). "
            f"Stages alone (samples/s): {stages}.",
        ]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="tiny models and inputs: a sanity check on any machine")
    ap.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    ap.add_argument("--precisions", nargs="+", default=list(PRECISIONS), choices=["fp32", "bf16", "fp16"])
    ap.add_argument("--only", nargs="+", help="run only the cases whose name contains one of these")
    ap.add_argument("--tokens", type=int, default=32, help="tokens Whisper generates per clip")
    ap.add_argument("--asr-batches", type=int, nargs="+", default=[16], help="Whisper batch sizes")
    ap.add_argument("--e2e-samples", type=int, default=128, help="images in the end-to-end job")
    ap.add_argument("--codec-images", type=int, default=4, help="images of 256 × 256 per call in the MBT2018 case")
    ap.add_argument("--min-seconds", type=float, default=2.0, help="timed pass of each measurement at least this long")
    ap.add_argument("--budget", type=float, default=float("inf"), help="start no new measurement after this many seconds")
    ap.add_argument("--out", default="out/gpu-bench")
    args = ap.parse_args()
    if args.device is None:
        import torch

        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    bench = Bench(args)
    bench.run()
    print()
    print(markdown({"environment": bench.environment(), "results": bench.results}))


if __name__ == "__main__":
    main()
