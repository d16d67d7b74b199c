"""Logging a run to an experiment tracker (`run --log-to mlflow`, the optional extra `mlflow`):
the job's parameters, and at the end the summary table's numbers as metrics, with the
results folder as a tag. MLflow is imported only when asked for; it reads its own settings
(``MLFLOW_TRACKING_URI``, ``MLFLOW_EXPERIMENT_NAME``; the experiment is else the job's name)."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import re

from mpq.runner import RunStats
from mpq.spec import JobSpec
from mpq.version import __version__

TRACKERS = ("mlflow",)


def check_tracker(to: str) -> None:
    """Before any work: a tracker that is unknown or not installed, in one line."""
    if to not in TRACKERS:
        raise ValueError(f"--log-to: unknown tracker {to!r}; valid choices: {', '.join(TRACKERS)}")
    if importlib.util.find_spec("mlflow") is None:
        raise ValueError("--log-to mlflow needs MLflow: install mpq with its extra, `pip install 'mpq[mlflow]'` (or `uv sync --extra mlflow`)")


def params(spec: JobSpec, output: str, limit: int | None) -> dict[str, str]:
    """The job's datasets, codecs with their settings, tasks, metrics, resources and mpq's version."""
    out = {"job": spec.name, "output": output, "limit": str(limit), "mpq_version": __version__,
           "metrics": ",".join(m.name for m in spec.metrics)}
    for d in spec.datasets:
        out[f"dataset.{d.name}"] = json.dumps({"source": d.source, "limit": d.limit}, sort_keys=True, default=str)
    for c in spec.codecs:
        out[f"codec.{c.name}"] = json.dumps([str(s) for s in spec.settings(c)])
    for t in spec.tasks:
        out[f"task.{t.task_id}"] = json.dumps({"name": t.name, **t.option_values}, sort_keys=True, default=str)
    out["resources"] = json.dumps(spec.resources.model_dump(mode="json"), sort_keys=True)
    return out


def summary_metrics(output: str) -> dict[str, float]:
    """Every finite number of the run's summary table, keyed ``dataset/task/codec/setting/column``."""
    from mpq.means import CONDITION, summarize
    from mpq.reading import read_results

    table = summarize(read_results(output))
    out = {}
    for row in table.iter_rows(named=True):
        where = "/".join(str(row[k] or "none") for k in CONDITION)
        for col, value in row.items():
            if col not in CONDITION and isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
                out[re.sub(r"[^\w\-. /:]", "_", f"{where}/{col}")] = float(value)  # the characters MLflow's keys allow
    return out


def log_run(to: str, spec: JobSpec, output: str, stats: RunStats, limit: int | None = None) -> str:
    """Log a finished run; returns the tracker's run id."""
    check_tracker(to)
    import mlflow

    mlflow.set_experiment(os.environ.get("MLFLOW_EXPERIMENT_NAME") or spec.name)
    with mlflow.start_run(run_name=spec.name) as run:
        mlflow.log_params(params(spec, output, limit))
        mlflow.set_tags({"mpq.output": output, "mpq.results": f"{output.rstrip('/')}/results"})
        mlflow.log_metrics({"rows_written": stats.written, "rows_with_errors": stats.errors, "rows_already_done": stats.already_done,
                            "seconds": stats.seconds, **summary_metrics(output)})
        return run.info.run_id
