"""Rate targets: a codec entry that asks for target rates instead of its settings,
``{name: jpeg, target_bpp: [0.1, 0.2, 0.4]}`` (images) or ``target_kbps`` (audio), the result
columns that record them, and the search. The job's parser, the results' schema, the engine
and the analysis import this module; it imports no other mpq module.

Per sample, the codec's quality knob is searched by bisection for the highest value whose
real bitstream's rate does not exceed the target; each step is a full round trip (through
the encoded cache, like any other). The knob is the integer range a codec declares:
``quality_range`` (Pillow's JPEG, WebP, AVIF: more quality, more bits), ``kbps_range``
(the FFmpeg audio codecs' requested bitrate, in whole kbps) or ``qp_range`` (HEVC and AV1:
a lower QP, more bits). A codec without one refuses
targets. Bisection keeps rate(low) ≤ target < rate(high) and ends with high = low + 1: the
chosen value fits and the next one up does not (or the encoder refuses it: a setting the
encoder refuses for this input counts as not fitting, except the lowest, whose error is
the row's).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

import pyarrow as pa

# Job key, also the result column of the rows coded at it → (rate column it targets, modality
# of the codecs that may use it).
TARGET_KEYS = {"target_bpp": ("bpp", "image"), "target_kbps": ("kbps", "audio")}
TARGET_SETTING = "target_setting"  # result column: the setting the search chose
COLUMNS = {**{key: pa.float64() for key in TARGET_KEYS}, TARGET_SETTING: pa.string()}  # of rows coded at a target
KNOBS = ("quality_range", "kbps_range", "qp_range")


@dataclass(frozen=True)
class Target:
    """A setting that asks for a rate: the row's condition is the target itself."""

    unit: str  # bpp or kbps
    value: float

    def __str__(self) -> str:
        return f"{self.unit}<={self.value:g}"

    @property
    def column(self) -> str:
        """The result column that records the target: ``target_bpp`` or ``target_kbps``."""
        return next(key for key, (unit, _) in TARGET_KEYS.items() if unit == self.unit)


def knob(codec_cls) -> list[int] | None:
    """The codec's quality values, lowest rate first, or None where it has no monotone knob."""
    for attr in KNOBS:
        bounds = getattr(codec_cls, attr, None)
        if bounds:
            values = list(range(int(bounds[0]), int(bounds[1]) + 1))
            return values[::-1] if attr == "qp_range" else values
    return None


def check(codec_cls, key: str, values: Any) -> str | None:
    """Why this codec cannot take these targets, or None."""
    unit, modality = TARGET_KEYS[key]
    if codec_cls.modality != modality:
        return f"{codec_cls.name} codes {codec_cls.modality}: {key} is for {modality} codecs"
    if knob(codec_cls) is None:
        return f"{codec_cls.name} has no monotone quality knob to search for a target rate; give its settings instead"
    if not isinstance(values, list) or not values or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0 for v in values):
        return f"must be a non-empty list of positive numbers ({unit}), got {values!r}"
    if len(set(values)) != len(values):
        return f"{values} repeats a target"
    return None


def search(roundtrip: Callable[[int], Any], rate: Callable[[Any], float], values: list[int], target: float, name: str) -> tuple[int, Any, float]:
    """(chosen value, its round trip, its rate): the highest of ``values`` whose rate does
    not exceed ``target``, by bisection. Raises ValueError when even the lowest exceeds it."""
    done: dict[int, tuple[Any, float]] = {}

    def at(i: int) -> float:
        if i not in done:
            try:
                coded = roundtrip(values[i])
            except Exception:
                if i == 0:
                    raise
                # An encoder that refuses a setting its range holds (Opus above 256 kbps on one
                # channel): that setting cannot be had, so it does not fit.
                done[i] = None, math.inf
            else:
                done[i] = coded, rate(coded)
        return done[i][1]

    low, high = 0, len(values) - 1
    if at(high) <= target:
        low = high
    elif at(low) > target:
        raise ValueError(f"target {target:g} out of reach: {name}'s lowest setting {values[low]} gives {at(low):.4g}")
    else:
        while high - low > 1:  # rate(low) <= target < rate(high)
            mid = (low + high) // 2
            if at(mid) <= target:
                low = mid
            else:
                high = mid
    return values[low], done[low][0], done[low][1]
