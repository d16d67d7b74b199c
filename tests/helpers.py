"""What many test files share: the repository's root, synthetic photos, the CLI run as a user
runs it, job files, tiny models written by ``save_pretrained``, rows counted on disk."""

import io
import subprocess
import sys
from pathlib import Path

import numpy as np
import yaml
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]


def photo(h=48, w=64, seed=0) -> np.ndarray:
    """A smooth synthetic RGB image (compressible like a photo, unlike noise)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    base = np.stack([x * 255 / w, y * 255 / h, (x + y) * 127 / (h + w)], axis=-1)
    return np.clip(base + rng.normal(0, 8, base.shape), 0, 255).astype(np.uint8)


def encode(img: Image.Image, fmt: str) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


def rows_on_disk(output) -> int:
    """Rows in every results file, superseded ones included (``read_results`` keeps one per key)."""
    import pyarrow.parquet as pq

    return sum(pq.read_metadata(f).num_rows for f in (Path(output) / "results").glob("*.parquet"))


def cli(*args, env: dict | None = None) -> subprocess.CompletedProcess:
    """``mpq-ray ARGS`` in a process of its own, as from a shell in the repository's root, with
    ``env`` over this process's environment: for what only a fresh process shows (its imports,
    exit code, signals, variables read at import)."""
    import os

    return subprocess.run([sys.executable, "-m", "mpq.cli", *args], cwd=ROOT, capture_output=True, text=True, env={**os.environ, **(env or {})})


def cli_here(*args, env: dict | None = None) -> subprocess.CompletedProcess:
    """``mpq-ray ARGS`` in this process, from the repository's root (the same ``app`` through
    click's runner, ``env`` set for the call): the command without a new process's imports."""
    import traceback
    from contextlib import chdir

    from typer.testing import CliRunner

    from mpq.cli import app

    with chdir(ROOT):
        res = CliRunner().invoke(app, [str(a) for a in args], env=env)
    stderr = res.stderr
    if res.exception is not None and not isinstance(res.exception, SystemExit):
        stderr += "".join(traceback.format_exception(res.exception))
    return subprocess.CompletedProcess(args, res.exit_code, res.stdout, stderr)


def write_job(path: Path, spec: dict) -> Path:
    path.write_text(yaml.safe_dump(spec))
    return path


def stop_job(tmp_path: Path, tracks: int) -> Path:
    """A job file whose samples take seconds each (3-s tracks through a Demucs), for stopping a run mid-sample."""
    return write_job(tmp_path / "job.yaml", {
        "name": "stop", "output": str(tmp_path / "out"),
        "datasets": [{"name": "music", "source": {"music": "synthetic", "tracks": tracks, "seconds": 3}}],
        "codecs": [{"name": "mp3", "settings": [64]}],
        "tasks": [{"name": "separate", "model": "builtin:tiny-htdemucs", "batch_size": 1}],
        "metrics": ["audio_psnr"],
    })


def mixtures(folder: Path, tracks=1, seconds=1) -> Path:
    """The synthetic music source's mixtures as WAV files, without their stems: a separation
    of them is not scored by BSS Eval (minutes on two cores), its agreement still is."""
    import soundfile as sf

    from mpq.sources.audio_samples import synthetic_track

    folder.mkdir(parents=True)
    for i in range(tracks):
        sf.write(folder / f"track-{i}.wav", sum(synthetic_track(i, seconds).values()), 44100, subtype="FLOAT")
    return folder


def tiny_vit(path: Path, names: list[str], answer: int) -> str:
    """A tiny ViT classifier over ``names``, as save_pretrained writes it, that always answers class ``answer``."""
    import torch
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    n = len(names)
    config = ViTConfig(
        image_size=32, patch_size=16, hidden_size=16, num_hidden_layers=1, num_attention_heads=1, intermediate_size=16,
        num_labels=n, id2label=dict(enumerate(names)), label2id={name: i for i, name in enumerate(names)},
    )
    model = ViTForImageClassification(config)
    with torch.no_grad():
        model.classifier.weight.zero_()
        model.classifier.bias.copy_(torch.eye(n)[answer] * 5)
    model.save_pretrained(path)
    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(path)
    return str(path)


def tiny_segformer(path: Path, num_labels: int) -> str:
    """A tiny random SegFormer (seeded), as save_pretrained writes it; its processor reduces labels (ADE20k's convention)."""
    import torch
    from transformers import SegformerConfig, SegformerForSemanticSegmentation, SegformerImageProcessor

    torch.manual_seed(0)
    labels = {i: f"c{i}" for i in range(num_labels)}
    config = SegformerConfig(
        num_labels=num_labels, hidden_sizes=[8, 8, 16, 16], depths=[1, 1, 1, 1], num_attention_heads=[1, 1, 1, 1],
        decoder_hidden_size=16, id2label=labels, label2id={v: k for k, v in labels.items()},
    )
    SegformerForSemanticSegmentation(config).save_pretrained(path)
    SegformerImageProcessor(size={"height": 32, "width": 32}, do_reduce_labels=True).save_pretrained(path)
    return str(path)
