"""The Ray engine: the stages as one streaming Ray Data graph.

Working rows (which hold numpy media of any shape) travel between stages as pickled
blobs in a single binary column; only the final result rows are columnar. Load and
codec stages run as CPU task pools, model and metric stages as actor pools (with GPUs
when the cluster has them). The driver consumes result blocks as they stream out and
hands them to the sink, so the dataset is never materialised.
"""

from __future__ import annotations

import os
import pickle
from typing import Any, Iterator

import pyarrow as pa

# Ray's `uv run` hook would rebuild a virtualenv in every worker; local workers already
# share this interpreter and cluster jobs get theirs from `mpq-ray submit`'s runtime_env.
os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")

from mpq.engine.stages import Encode, Finalize, Load, Measure, Predict
from mpq.spec import JobSpec

COLUMN = "row"


def _pack(rows: list[dict[str, Any]]) -> pa.Table:
    return pa.table({COLUMN: pa.array([pickle.dumps(r, protocol=5) for r in rows], type=pa.large_binary())})


def _unpack(batch: pa.Table) -> list[dict[str, Any]]:
    return [pickle.loads(b) for b in batch.column(COLUMN).to_pylist()]


def _apply(batch: pa.Table, stage) -> pa.Table:
    return _pack(stage(_unpack(batch)))


def _finalize(batch: pa.Table, stage: Finalize) -> pa.Table:
    return stage(_unpack(batch))


class _Actor:
    """An actor holding one stage object built once (model loading happens here)."""

    def __init__(self, stage_cls, *args, threads: int = 1):
        import torch

        torch.set_num_threads(max(1, threads))
        self.stage = stage_cls(*args)

    def __call__(self, batch: pa.Table) -> pa.Table:
        return _pack(self.stage(_unpack(batch)))


def _pool(size) -> "ray.data.ActorPoolStrategy":
    import ray.data

    lo, hi = (size, size) if isinstance(size, int) else size
    return ray.data.ActorPoolStrategy(min_size=lo, max_size=hi)


def _available(resource: str) -> bool:
    """Whether the cluster has the resource now, or its autoscaler can add nodes that have it."""
    import ray

    if ray.cluster_resources().get(resource, 0) > 0:
        return True
    try:  # the autoscaler's node types (what Ray Data itself consults to plan for autoscaling)
        most = ray._private.state.state.get_max_resources_from_cluster_config() or {}
    except Exception:  # no autoscaler, or an older Ray
        most = {}
    return most.get(resource, 0) > 0


def init_ray(address: str | None = None) -> None:
    import ray

    if ray.is_initialized():
        return
    ray.init(
        address=address or os.environ.get("RAY_ADDRESS"),
        logging_level="ERROR",
        log_to_driver=True,
        include_dashboard=None,
        runtime_env={"env_vars": {"TOKENIZERS_PARALLELISM": "false"}},
    )


def run_ray(job: JobSpec, items: list[dict[str, Any]], finalize: Finalize, address: str | None = None) -> Iterator[pa.Table]:
    import ray
    import ray.data

    init_ray(address)
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False  # mpq shows its own
    ctx.print_on_execution_start = False
    res = job.resources
    has_gpu = _available("GPU")
    model_gpus = res.model_gpus if has_gpu else 0
    metric_gpus = res.metric_gpus if has_gpu else 0
    codec_resources = {k: v for k, v in res.codec_resources.items() if _available(k)} or None
    threads = max(1, int(res.codec_cpus))

    # One block per sample: samples are the unit of parallelism for loading and coding.
    ds = ray.data.from_items([{COLUMN: pickle.dumps(i, protocol=5)} for i in items], override_num_blocks=max(1, len(items)))
    ds = ds.map_batches(_apply, fn_kwargs={"stage": Load(job)}, batch_size=1, batch_format="pyarrow", num_cpus=res.codec_cpus, resources=codec_resources)
    ds = ds.map_batches(_apply, fn_kwargs={"stage": Encode(job)}, batch_size=1, batch_format="pyarrow", num_cpus=res.codec_cpus, resources=codec_resources)
    for task in job.tasks:
        ds = ds.map_batches(
            _Actor, fn_constructor_args=(Predict, job, task.task_id), fn_constructor_kwargs={"threads": threads},
            batch_size=task.batch_size, batch_format="pyarrow", compute=_pool(res.model_actors),
            num_gpus=model_gpus, num_cpus=0 if model_gpus else res.codec_cpus,
        )
    if job.metrics:
        ds = ds.map_batches(
            _Actor, fn_constructor_args=(Measure, job), fn_constructor_kwargs={"threads": threads},
            batch_size=res.metric_batch_size, batch_format="pyarrow", compute=_pool(res.metric_actors),
            num_gpus=metric_gpus, num_cpus=0 if metric_gpus else res.codec_cpus,
        )
    ds = ds.map_batches(_finalize, fn_kwargs={"stage": finalize}, batch_size=None, batch_format="pyarrow", num_cpus=0.1)
    for batch in ds.iter_batches(batch_size=None, batch_format="pyarrow", prefetch_batches=0):
        yield batch
