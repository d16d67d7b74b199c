"""mpq: what lossy compression does to the models that consume compressed data.

``mpq.run(job, ...)`` runs a job from Python; everything else is imported where it is used,
so that ``import mpq`` stays light (no torch, no Ray)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from mpq.version import __version__

__all__ = ["__version__", "run"]

if TYPE_CHECKING:
    from pathlib import Path

    from mpq.runner import RunStats
    from mpq.spec import JobSpec


def run(
    job: str | Path | dict[str, Any] | JobSpec,
    output: str | None = None,
    *,
    engine: str | None = None,
    limit: int | None = None,
    progress: bool = False,
    redo: tuple[str, ...] = (),
    log_to: str | None = None,
    **options: Any,
) -> RunStats:
    """Run ``job`` (a job file's path, its content as a dict, or a parsed ``JobSpec``) as
    ``mpq-ray run`` does, into ``output`` (default: the job's ``output``, else ``out/<name>``);
    ``engine`` as ``run --engine`` (default: the command's), ``log_to="mlflow"`` as
    ``run --log-to mlflow``; ``options``: the runner's others (``address``, ``force``).
    Returns the run's counts (rows written, errors, already done, seconds). A bad job raises
    ``mpq.spec.JobSpecError``; a resume with nothing left to do loads no model."""
    from pathlib import Path

    from mpq.runner import run_job
    from mpq.spec import JobSpec, load_job, parse_job

    if log_to is not None:
        from mpq.tracking import check_tracker

        check_tracker(log_to)  # before any work
    spec = job if isinstance(job, JobSpec) else parse_job(job) if isinstance(job, dict) else load_job(Path(job))
    out = output or spec.output or f"out/{spec.name}"
    if engine is not None:
        options["engine"] = engine
    stats = run_job(spec, out, limit=limit, progress=progress, redo=tuple(redo), **options)
    if log_to is not None:
        from mpq.tracking import log_run

        log_run(log_to, spec, out, stats, limit)
    return stats
