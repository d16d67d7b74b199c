"""Running a job on a Ray cluster through Ray's Jobs API.

The job's driver is ``python -m mpq.cli run`` on the head node. Its runtime environment
carries the job file (as the working directory), mpq's own source and that of the plugins
the job uses (as py_modules, with their entry points), so the cluster runs exactly the code
that submitted it; the cluster's Python environment provides their dependencies (see
cluster.yaml).
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import logging
import os
import re
import shlex
import shutil
import sys
import tempfile
import uuid
from importlib.metadata import Distribution, entry_points
from pathlib import Path

import mpq
from mpq import registry
from mpq.spec import JobSpec


def shared_output(job: JobSpec, output: str | None) -> str:
    """Where a cluster run writes: a URL, or an absolute path that the head node (the driver) sees."""
    out = output or job.output or f"out/{job.name}"
    if "://" not in out and not os.path.isabs(out):
        raise ValueError(
            f"output {out!r} is a relative path, which on a cluster would land in a temporary folder of the "
            "head node; give --output an absolute path on shared storage (e.g. /mnt/shared/mpq/"
            f"{job.name}) or a URL (e.g. s3://bucket/mpq/{job.name})"
        )
    return out


class ClusterError(Exception):
    """What the cluster answered (or that none did), in one line for the user."""


def _token_headers() -> dict[str, str]:
    """The token of Ray's token authentication, found where Ray's own ``ray.init`` finds it
    (~/.ray/auth_token, RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH). The Jobs client sends it only
    when RAY_AUTH_MODE=token, yet `ray start --head` turns authentication on whenever a token
    file exists, so a default local head would refuse mpq; sending it always is what
    ``ray.init`` does when it connects to an existing cluster."""
    if os.environ.get("RAY_AUTH_MODE", "").lower() == "disabled":
        return {}
    from ray._raylet import AuthenticationTokenLoader

    loader = AuthenticationTokenLoader.instance()
    if not loader.has_token(ignore_auth_mode=True):
        return {}
    return {"Authorization": f"Bearer {loader.get_raw_token(ignore_auth_mode=True)}"}


TOKEN_FIX = (
    "put the head's token (`ray get-auth-token` on the head) in ~/.ray/auth_token, "
    "or name it with RAY_AUTH_TOKEN or RAY_AUTH_TOKEN_PATH"
)


@contextlib.contextmanager
def answers(address: str | None, job_id: str | None = None):
    """Turn the Jobs API's exceptions for a cluster's answer into a one-line ClusterError."""
    import requests
    from ray.exceptions import AuthenticationError

    where = _where(address)
    try:
        yield
    except AuthenticationError as exc:
        if str(exc).startswith("Authentication failed"):
            raise ClusterError(f"the Ray cluster at {where} refused this machine's token: {TOKEN_FIX}") from None
        raise ClusterError(f"the Ray cluster at {where} requires a token and none was found: {TOKEN_FIX}") from None
    except (ConnectionError, requests.exceptions.ConnectionError):
        raise ClusterError(
            f"no Ray cluster answers at {where}: start one (`ray start --head`) or give its dashboard "
            "address with --address or RAY_ADDRESS, e.g. http://HEAD:8265"
        ) from None
    except RuntimeError as exc:
        if job_id is not None and re.search(r"status code 404: Job .* does not exist", str(exc)):
            raise ClusterError(f"no job {job_id!r} on the Ray cluster at {where} (`ray job list` lists them)") from None
        raise
    except ValueError as exc:
        raise ClusterError(f"{where} is not a Ray dashboard address ({exc}); expected e.g. http://HEAD:8265") from None


def _where(address: str | None) -> str:
    return address or os.environ.get("RAY_ADDRESS") or "http://127.0.0.1:8265 (no --address, no RAY_ADDRESS)"


def client(address: str | None):
    """A Jobs API client; ``address`` defaults to RAY_ADDRESS, as for ``ray job``."""
    from ray.job_submission import JobSubmissionClient

    # Not Ray's notes on each upload and log stream (these loggers set their own level).
    for name in ("ray.dashboard.modules.dashboard_sdk", "ray.dashboard.modules.job.sdk", "ray._private.runtime_env.packaging"):
        logging.getLogger(name).setLevel(logging.WARNING)
    return JobSubmissionClient(address, headers=_token_headers())


def plugins(job: JobSpec) -> dict[str, Distribution]:
    """The installed distributions, by top-level package, whose entry points provide
    components the job names (mpq's own excepted)."""
    named = [("source", d.source_type) for d in job.datasets] + [("codec", c.name) for c in job.codecs]
    named += [("task", t.name) for t in job.tasks] + [("metric", m.name) for m in job.metrics]
    used = {registry.get(kind, name).__module__.partition(".")[0] for kind, name in named} - {"mpq"}
    found = {}
    for group in registry.ENTRY_POINT_GROUPS.values():
        for ep in entry_points(group=group):
            top = ep.module.partition(".")[0]
            if top in used and ep.dist is not None:
                found[top] = ep.dist
    return found


def runtime_env(job: JobSpec, staging: Path, env: dict[str, str] | None = None) -> dict:
    """The runtime environment of a cluster run, with ``staging`` (holding the job file) as its
    working directory. Each plugin the job uses travels as a py_module (its source: an
    editable install's too), and its entry points as a ``.dist-info`` folder in the working
    directory, which the driver and every worker have on their path: the registry there
    finds the plugin as it did here. Nothing is installed on the cluster, so this works
    offline; a plugin's own dependencies must be in the cluster's environment."""
    modules = [os.path.dirname(mpq.__file__)]
    for top, dist in sorted(plugins(job).items()):
        spec = importlib.util.find_spec(top)
        modules.append(spec.submodule_search_locations[0] if spec.submodule_search_locations else spec.origin)
        info = staging / f"{dist.metadata['Name'].replace('-', '_')}-{dist.version}.dist-info"
        info.mkdir(exist_ok=True)
        for name in ("METADATA", "entry_points.txt"):
            (info / name).write_text(dist.read_text(name) or "")
    return {
        "working_dir": str(staging),
        "py_modules": modules,
        "excludes": ["__pycache__"],
        # Ray's `uv run` hook would build a virtualenv per worker; the cluster's own is used.
        "env_vars": {"RAY_ENABLE_UV_RUN_RUNTIME_ENV": "0", **(env or {})},
    }


def submit(
    job_file: Path,
    job: JobSpec,
    output: str,
    address: str | None = None,
    limit: int | None = None,
    env: dict[str, str] | None = None,
    force: bool = False,
    redo: tuple[str, ...] = (),
) -> str:
    """Submit ``job_file`` to run on the cluster; returns the submission id."""
    staging = Path(tempfile.mkdtemp(prefix="mpq-submit-"))
    try:
        shutil.copy(job_file, staging / "job.yaml")
        # The upload happens here, so the staging folder can go right after.
        return client(address).submit_job(
            entrypoint=entrypoint(output, limit, force, redo),
            runtime_env=runtime_env(job, staging, env),
            submission_id=f"mpq-{job.name}-{uuid.uuid4().hex[:8]}",
            metadata={"mpq_job": job.name, "mpq_output": output, "mpq_version": mpq.__version__},
        )
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def entrypoint(output: str, limit: int | None = None, force: bool = False, redo: tuple[str, ...] = ()) -> str:
    """The command the cluster runs: `mpq-ray run` of the uploaded job on the cluster it runs on
    ("auto": the one on the node its driver runs on), whatever its size. Ray starts it in a
    shell and stops a job by signalling that process and its children as they are at the stop:
    `exec` makes the shell the driver, so a stop that lands as the job starts cannot leave a
    driver behind, orphaned, running the whole job."""
    args = ["python", "-m", "mpq.cli", "run", "job.yaml", "--output", output, "--no-progress", "--engine", "ray", "--address", "auto"]
    if limit is not None:
        args += ["--limit", str(limit)]
    if force:
        args.append("--force")
    for kind in redo:
        args += ["--redo", kind]
    return "exec " + shlex.join(args)


def follow(address: str | None, submission_id: str) -> str:
    """Print the job's logs as they come until it ends; returns its final status."""
    c = client(address)
    c.get_job_status(submission_id)  # an unknown id fails here, with the 404 `answers` knows

    async def tail():
        async for lines in c.tail_job_logs(submission_id):
            sys.stdout.write(lines)
            sys.stdout.flush()

    try:
        asyncio.run(tail())
    except RuntimeError as exc:  # Ray's SDK: "WebSocket connection closed unexpectedly with close code 1006"
        if "WebSocket" not in str(exc):
            raise
        raise ClusterError(
            f"lost the Ray cluster at {_where(address)} while following {submission_id} ({exc}): the job may run "
            f"on; `mpq-ray status {submission_id}` tells"
        ) from None
    return str(c.get_job_status(submission_id))
