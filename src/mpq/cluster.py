"""Running a job on a Ray cluster through Ray's Jobs API.

The job's driver is ``python -m mpq.cli run`` on the head node. Its runtime environment
carries the job file (as the working directory) and mpq's own source (as a py_module),
so the cluster runs exactly the mpq that submitted it; the cluster's Python environment
provides mpq's dependencies (see cluster.yaml).
"""

from __future__ import annotations

import asyncio
import os
import shlex
import shutil
import sys
import tempfile
import uuid
from pathlib import Path

import mpq
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


def client(address: str | None):
    """A Jobs API client; ``address`` defaults to RAY_ADDRESS, as for ``ray job``."""
    from ray.job_submission import JobSubmissionClient

    return JobSubmissionClient(address)


def submit(
    job_file: Path,
    job: JobSpec,
    output: str,
    address: str | None = None,
    limit: int | None = None,
    env: dict[str, str] | None = None,
    force: bool = False,
) -> str:
    """Submit ``job_file`` to run on the cluster; returns the submission id."""
    staging = Path(tempfile.mkdtemp(prefix="mpq-submit-"))
    try:
        shutil.copy(job_file, staging / "job.yaml")
        args = ["python", "-m", "mpq.cli", "run", "job.yaml", "--output", output, "--no-progress"]
        if limit is not None:
            args += ["--limit", str(limit)]
        if force:
            args.append("--force")
        runtime_env = {
            "working_dir": str(staging),
            "py_modules": [os.path.dirname(mpq.__file__)],
            "excludes": ["__pycache__"],
            # Ray's `uv run` hook would build a virtualenv per worker; the cluster's own is used.
            "env_vars": {"RAY_ENABLE_UV_RUN_RUNTIME_ENV": "0", **(env or {})},
        }
        # The upload happens here, so the staging folder can go right after.
        return client(address).submit_job(
            entrypoint=shlex.join(args),
            runtime_env=runtime_env,
            submission_id=f"mpq-{job.name}-{uuid.uuid4().hex[:8]}",
            metadata={"mpq_job": job.name, "mpq_output": output, "mpq_version": mpq.__version__},
        )
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def follow(address: str | None, submission_id: str) -> str:
    """Print the job's logs as they come until it ends; returns its final status."""
    c = client(address)

    async def tail():
        async for lines in c.tail_job_logs(submission_id):
            sys.stdout.write(lines)
            sys.stdout.flush()

    asyncio.run(tail())
    return str(c.get_job_status(submission_id))
