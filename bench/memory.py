"""Peak memory of a run with one huge image among ordinary photos (issue: one 10000 × 10000
PNG killed a serial run at 22 GB).

    uv run python bench/memory.py                 # a 50-megapixel PNG among 8 photos, serial engine
    uv run python bench/memory.py --megapixels 50 --engine ray

The job's `max_pixels` (default 40 MP) turns the huge image into an error row before any
codec, model or metric work; the peak is then set by decoding it once. The baseline, run in
the same invocation, is the same job without the huge image: the ratio says what the huge
image costs. Memory is the peak RSS summed over the run's process tree (Ray's included),
sampled every 0.2 s.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import psutil
import yaml
from peak import communicate_with_peak
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]


def folder(root: Path, megapixels: float | None) -> Path:
    from skimage import data

    (root / "photos").mkdir(parents=True)
    for name in ("astronaut", "chelsea", "coffee", "rocket", "camera", "immunohistochemistry", "hubble_deep_field", "logo"):
        Image.fromarray(getattr(data, name)()).save(root / "photos" / f"{name}.png")
    if megapixels:
        side = int((megapixels * 1e6) ** 0.5)
        y, x = np.mgrid[0:side, 0:side].astype(np.float32)
        huge = np.stack([x * 255 / side, y * 255 / side, (x + y) * 127 / side], axis=-1).astype(np.uint8)
        Image.fromarray(huge).save(root / "photos" / "huge.png", compress_level=1)
    return root / "photos"


def run(images: Path, engine: str, out: Path) -> tuple[int, str]:
    job = {
        "name": "memory", "datasets": [{"name": "photos", "source": {"folder": str(images)}}],
        "codecs": [{"name": "jpeg", "settings": [10, 50]}], "tasks": [{"name": "classify", "model": "builtin:tiny-vit"}],
        "metrics": ["psnr", "lpips"],
    }
    path = out.with_suffix(".yaml")
    path.write_text(yaml.safe_dump(job))
    proc = subprocess.Popen([sys.executable, "-m", "mpq.cli", "run", str(path), "-o", str(out), "--engine", engine, "--no-progress"],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def tree_rss(pid: int) -> int:
        root = psutil.Process(pid)
        return sum(p.memory_info().rss for p in [root, *root.children(recursive=True)] if p.is_running())

    stdout, stderr, peak = communicate_with_peak(proc, tree_rss, every=0.2)
    if proc.returncode != 0:
        sys.exit(f"run failed ({proc.returncode}): {stderr[-2000:]}")
    return peak, stdout.strip().splitlines()[-1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--megapixels", type=float, default=50)
    parser.add_argument("--engine", default="serial", choices=("serial", "ray"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        base, _ = run(folder(Path(tmp) / "base", None), args.engine, Path(tmp) / "out-base")
        peak, line = run(folder(Path(tmp) / "huge", args.megapixels), args.engine, Path(tmp) / "out-huge")
    print(f"{args.engine}: 8 photos {base / 2**20:.0f} MiB; with one {args.megapixels:g}-MP image {peak / 2**20:.0f} MiB "
          f"({peak / base:.2f}×)\n  {line}")


if __name__ == "__main__":
    main()
