"""Where the Ray engine runs each stage: which model, metric and neural-codec stages share an
actor pool (same CPUs and GPUs per actor), how many actors, on what the cluster offers."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from mpq.cache import EncodedCache
from mpq.engine.stages import Encode, Measure, Predict
from mpq.job import Job


@dataclass
class Group:
    """Model/metric stages sharing one actor pool: same CPUs and GPUs per actor."""

    cpus: float
    gpus: float
    pool: Any  # the job's actor-pool setting of its first stage that has one: n, (min, max) or None (auto)
    batch_size: int
    specs: list[tuple] = field(default_factory=list)  # (stage class, its arguments), built in the actor


def available(resource: str) -> bool:
    """Whether a node of the cluster has the resource now (Ray has no public way to ask what its
    autoscaler could add: a cluster keeps a node of each kind the job needs, cluster.yaml)."""
    import ray

    return ray.cluster_resources().get(resource, 0) > 0


def gpu_codecs(job: Job, has_gpu: bool) -> set[str]:
    """The neural codecs that code in a GPU actor pool: all of them where the cluster has GPUs
    and the job gives the pool some (``codec_gpus``); else none, and they code in CPU tasks."""
    if not (has_gpu and job.spec.resources.codec_gpus):
        return set()
    return {name for name, c in job.codecs.items() if c.cls.runs_on == "gpu"}


def groups(job: Job, has_gpu: bool, cache: EncodedCache | None = None) -> list[Group]:
    res = job.spec.resources
    stages = []
    if neural := gpu_codecs(job, has_gpu):
        stages.append((res.codec_gpus, res.codec_actors, res.codec_batch_size,
                       (Encode, (job, cache, neural, None, res.codec_batch_size))))
    # On a GPU actor the device is the one torch sees there (None): a GPU that Ray counts but
    # torch cannot reach (a node that declares GPUs it lacks) leaves the work on the CPU.
    for task in job.tasks.values():
        gpus = res.model_gpus if has_gpu else 0
        stages.append((gpus, res.model_actors, task.spec.batch_size, (Predict, (job, task.task_id, None if gpus else "cpu"))))
    if job.metrics:
        gpus = res.metric_gpus if has_gpu else 0
        stages.append((gpus, res.metric_actors, res.metric_batch_size, (Measure, (job, None if gpus else "cpu"))))
    out: list[Group] = []
    for gpus, pool, batch, spec in stages:
        cpus = 0 if gpus else res.codec_cpus
        if not out or (out[-1].cpus, out[-1].gpus) != (cpus, gpus):
            out.append(Group(cpus, gpus, pool, batch))
        out[-1].pool = out[-1].pool if out[-1].pool is not None else pool  # the first stage's that sets one
        out[-1].batch_size = max(out[-1].batch_size, batch)
        out[-1].specs.append(spec)
    return out


def pool(group: Group, cluster: dict[str, float], shared: bool):
    """The job's pool size, or by default as many actors as the cluster's GPUs (CPUs for CPU
    actors) hold; autoscaling from one when other operators need the same resource."""
    import ray.data

    if group.pool is not None:
        lo, hi = (group.pool, group.pool) if isinstance(group.pool, int) else group.pool
    else:
        kind, each = ("GPU", group.gpus) if group.gpus else ("CPU", group.cpus)
        hi = max(1, math.floor(cluster.get(kind, 0) / each))
        lo = 1 if shared else hi
    return ray.data.ActorPoolStrategy(min_size=lo, max_size=hi)
