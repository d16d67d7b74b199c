"""The engines (serial, Ray) and what they share: the plan, the stages, in-flight notes; and
which engine ``--engine auto`` picks."""

import glob
import os

# Before any engine module imports Ray, which reads it at import: Ray's `uv run` hook would
# rebuild a virtualenv in every worker (under a path too long for espeak-ng's data, whose
# workers then exit); local workers already share this interpreter, and cluster jobs get
# theirs from `mpq-ray submit`'s runtime_env.
os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")

ENGINES = ("auto", "ray", "serial")
# `auto` runs serially below this many CPUs, where the run would start its own Ray and has no
# GPU: on 2 cores the serial engine ran the smoke job in 76 s against Ray's 100 s (Ray's start
# is not paid back); more cores are not measured yet (docs/performance.md).
RAY_FROM_CPUS = 4


def verbose() -> bool:
    """`mpq-ray run --verbose`: Ray's and the models' own output reaches the terminal too."""
    return os.environ.get("MPQ_VERBOSE", "") not in ("", "0")


def cluster_address(address: str | None) -> str | None:
    """The Ray cluster a run joins: ``--address``, else ``RAY_ADDRESS``; None: the run starts
    a cluster of its own."""
    return address or os.environ.get("RAY_ADDRESS") or None


def cpus() -> int:
    """The CPUs this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def gpus() -> int:
    """NVIDIA GPUs this process may use, counted as CUDA counts them (``CUDA_VISIBLE_DEVICES``
    where set, else the devices present) without importing torch (seconds)."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return len([d for d in visible.split(",") if d.strip() and not d.strip().startswith("-")])
    return len(glob.glob("/dev/nvidia[0-9]*"))


def choose(engine: str, address: str | None, cpus: int, gpus: int) -> tuple[str, str]:
    """The engine a run uses (``engine``, or what ``auto`` picks for a cluster ``address`` or
    none, on a machine of ``cpus`` and ``gpus``), and why, as the run's summary says it."""
    if engine not in ENGINES:
        raise ValueError(f"unknown engine {engine!r}; valid choices: {', '.join(ENGINES)}")
    if engine != "auto":
        return engine, f"--engine {engine}"
    if address:
        return "ray", f"auto: cluster {address}"
    gpu = f"{gpus} GPU{'s' * (gpus > 1)}" if gpus else "no GPU"
    why = f"auto: {cpus} CPU{'s' * (cpus > 1)}, {gpu}, no cluster"
    return ("ray" if gpus or cpus >= RAY_FROM_CPUS else "serial"), why
