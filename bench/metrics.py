"""What each quality metric costs: CPU seconds (all threads of this process) per pair of a
reference and one coded version, on a 512 × 768 photograph (scikit-image's coffee, resized,
through JPEG q20) for image metrics and a 3-s speech clip (espeak-ng's Harvard sentences,
through Opus 16 kbps) at 16 and 48 kHz mono for audio metrics. Models are loaded by a first
call that is not counted; the median of the repeats is printed, with the load average.

    uv run python bench/metrics.py                    # every registered metric
    uv run python bench/metrics.py dists pesq --repeat 5
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import numpy as np


def photo():
    import PIL.Image
    from skimage import data

    from mpq.media import Image

    return Image(np.asarray(PIL.Image.fromarray(data.coffee()).resize((768, 512), PIL.Image.LANCZOS)))


def speech(rate: int):
    from mpq.media import Audio
    from mpq.sources.audio_samples import Speech, SpeechOptions

    source = Speech(SpeechOptions(speech="espeak", count=2, sample_rate=rate))
    x = np.concatenate([source.load(i).media.samples for i in source.ids()])[: 3 * rate]
    return Audio(np.ascontiguousarray(x), rate)


def cost(metric, ref, coded, repeat: int, versions: int = 1) -> float:
    """Median CPU seconds per coded version, ``versions`` of them against one reference per call."""
    metric.compute([ref], [coded])  # loads the model
    times = []
    for _ in range(repeat):
        start = time.process_time()
        metric.compute([ref] * versions, [coded] * versions)
        times.append((time.process_time() - start) / versions)
    return statistics.median(times)


def main() -> None:
    from mpq import registry

    parser = argparse.ArgumentParser()
    parser.add_argument("names", nargs="*")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    img = photo()
    jpeg = registry.get("codec", "jpeg")().roundtrip(img, 20).decoded
    clips = {rate: speech(rate) for rate in (16000, 48000)}
    opus = registry.get("codec", "opus")()
    coded = {rate: opus.roundtrip(clip, 16).decoded for rate, clip in clips.items()}
    print(f"load average at start: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    for name in args.names or registry.names("metric"):
        cls = registry.get("metric", name)
        metric = cls()
        if cls.modality == "image":
            one, five = cost(metric, img, jpeg, args.repeat), cost(metric, img, jpeg, args.repeat, versions=5)
            print(f"{name:12s} 512x768 photo: {one:7.3f} s per pair, {five:7.3f} s per version with 5 per reference")
        else:
            per = [cost(metric, clips[r], coded[r], args.repeat) for r in (16000, 48000)]
            print(f"{name:12s} 3-s speech: {per[0]:7.3f} s at 16 kHz, {per[1]:7.3f} s at 48 kHz")
    print(f"load average at end: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
