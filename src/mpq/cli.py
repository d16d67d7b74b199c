"""`mpq-ray`: run jobs locally or on a Ray cluster, list what is registered."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Annotated, Optional

import typer

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Machine perceptual quality: what lossy compression does to the models that consume it.")


def _fail(message: str) -> None:
    typer.secho(message, fg=typer.colors.RED, err=True)
    raise typer.Exit(2)


@app.command()
def run(
    job_file: Annotated[Path, typer.Argument(help="job YAML, e.g. jobs/smoke.yaml")],
    output: Annotated[Optional[str], typer.Option("--output", "-o", help="results folder or URI (default: the job's `output`, else out/<name>)")] = None,
    engine: Annotated[str, typer.Option(help="ray (streaming, parallel) or serial (one process)")] = "ray",
    limit: Annotated[Optional[int], typer.Option(help="at most this many samples per dataset")] = None,
    address: Annotated[Optional[str], typer.Option(help="Ray cluster address (default: RAY_ADDRESS, else an embedded local Ray)")] = None,
    progress: Annotated[bool, typer.Option(help="show a progress bar")] = True,
    force: Annotated[bool, typer.Option(help="take over the output's lease from a run that is gone")] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="also show Ray's and the models' own output (by default it stays in Ray's log folder)")] = False,
) -> None:
    """Run a job; a second run on the same output resumes, skipping rows already written."""
    if verbose:
        os.environ["MPQ_VERBOSE"] = "1"  # read by the Ray engine
    from mpq.components import AssetUnavailable
    from mpq.lease import LeaseHeld, LeaseLost
    from mpq.spec import JobSpecError, load_job

    try:
        job = load_job(job_file)
    except JobSpecError as exc:
        _fail(str(exc))
    from mpq.runner import run_job
    from mpq.summary import print_summary, read_results

    out = output or job.output or f"out/{job.name}"
    try:
        stats = run_job(job, out, engine=engine, limit=limit, address=address, progress=progress, force=force)
    except (LeaseHeld, LeaseLost) as exc:
        _fail(str(exc))
    except (AssetUnavailable, OSError, ValueError) as exc:  # OSError: an output that cannot be written
        _fail(f"{job_file}: {exc}")
    head = f" ({stats.head_start} of them in mpq's own worker while Ray started)" if stats.head_start else ""
    typer.echo(
        f"{stats.written} rows written ({stats.errors} with errors), {stats.already_done} already there; "
        f"{stats.samples} samples in {stats.seconds:.0f} s{head}; results in {out}/results"
    )
    print_summary(read_results(out))


@app.command()
def fetch(
    job_file: Annotated[Path, typer.Argument(help="job YAML, e.g. jobs/beans.yaml")],
    cache_dir: Annotated[Optional[Path], typer.Option(help="fill caches under this folder (huggingface/, torch/) instead of the usual ones")] = None,
) -> None:
    """Download every model, checkpoint and dataset the job names into the library caches,
    so that a machine without network access then runs the job with HF_HUB_OFFLINE=1."""
    if cache_dir is not None:  # before any library reads its cache location
        cache_dir = cache_dir.resolve()
        os.environ["HF_HOME"] = str(cache_dir / "huggingface")
        os.environ["TORCH_HOME"] = str(cache_dir / "torch")
        for var in ("HF_HUB_CACHE", "HF_DATASETS_CACHE"):  # would win over HF_HOME
            os.environ.pop(var, None)
    from mpq.components import AssetUnavailable
    from mpq.job import resolve
    from mpq.spec import JobSpecError, load_job

    try:
        assets = resolve(load_job(job_file)).assets()
    except JobSpecError as exc:
        _fail(str(exc))
    failed = []
    for asset in assets:
        try:
            asset.fetch()
        except AssetUnavailable as exc:
            failed.append(str(exc))
            typer.secho(f"  failed  {asset}", fg=typer.colors.RED)
        else:
            typer.echo(f"  cached  {asset}")
    if failed:
        _fail("\n".join(failed))
    typer.echo(f"{len(assets)} assets cached" + ("" if assets else " (the job downloads nothing)"))
    if cache_dir is not None:
        typer.echo(f"to run from this cache: HF_HOME={os.environ['HF_HOME']} TORCH_HOME={os.environ['TORCH_HOME']} HF_HUB_OFFLINE=1")


ADDRESS_HELP = "Ray dashboard address, e.g. http://HEAD:8265 (default: RAY_ADDRESS)"


@app.command()
def submit(
    job_file: Annotated[Path, typer.Argument(help="job YAML, e.g. jobs/all.yaml")],
    address: Annotated[Optional[str], typer.Option(help=ADDRESS_HELP)] = None,
    output: Annotated[Optional[str], typer.Option("--output", "-o", help="results: an absolute path on shared storage or a URL (default: the job's `output`)")] = None,
    limit: Annotated[Optional[int], typer.Option(help="at most this many samples per dataset")] = None,
    env: Annotated[Optional[list[str]], typer.Option("--env", help="KEY=VALUE set for the run on the cluster (repeatable), e.g. HF_HUB_OFFLINE=1")] = None,
    follow: Annotated[bool, typer.Option(help="print the logs until the job ends; exit 0 only if it succeeded")] = False,
    force: Annotated[bool, typer.Option(help="take over the output's lease from a run that is gone")] = False,
) -> None:
    """Run a job on a Ray cluster through the Jobs API; prints the job id and where results land."""
    from mpq import cluster
    from mpq.spec import JobSpecError, load_job

    try:
        job = load_job(job_file)
        out = cluster.shared_output(job, output)
    except (JobSpecError, ValueError) as exc:
        _fail(f"{job_file}: {exc}")
    pairs = [e.partition("=") for e in env or []]
    if any(not sep or not k for k, sep, _ in pairs):
        _fail(f"--env takes KEY=VALUE, got {env}")
    with _cluster(address):
        job_id = cluster.submit(job_file, job, out, address, limit, {k: v for k, _, v in pairs}, force)
    typer.echo(f"submitted {job_id}\nresults: {out}/results\nfollow with: mpq-ray logs {job_id} --follow")
    if follow:
        with _cluster(address, job_id):
            status = cluster.follow(address, job_id)
        _end(status)


@contextlib.contextmanager
def _cluster(address: str | None, job_id: str | None = None):
    """A cluster's answer (no cluster, no token, no such job) as one line, not a traceback."""
    from mpq import cluster

    try:
        with cluster.answers(address, job_id):
            yield
    except cluster.ClusterError as exc:
        _fail(str(exc))


def _end(status: str) -> None:
    typer.echo(f"job {status}")
    raise typer.Exit(0 if status == "SUCCEEDED" else 1)


@app.command()
def status(job_id: str, address: Annotated[Optional[str], typer.Option(help=ADDRESS_HELP)] = None) -> None:
    """Print a submitted job's status (PENDING, RUNNING, SUCCEEDED, FAILED, STOPPED)."""
    from mpq import cluster

    with _cluster(address, job_id):
        info = cluster.client(address).get_job_info(job_id)
    typer.echo(f"{job_id}: {info.status}" + (f" ({info.message})" if info.message else ""))


@app.command()
def logs(
    job_id: str,
    address: Annotated[Optional[str], typer.Option(help=ADDRESS_HELP)] = None,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="keep printing until the job ends; exit 0 only if it succeeded")] = False,
) -> None:
    """Print a submitted job's logs."""
    from mpq import cluster

    with _cluster(address, job_id):
        if not follow:
            typer.echo(cluster.client(address).get_job_logs(job_id), nl=False)
            return
        status = cluster.follow(address, job_id)
    _end(status)


@app.command()
def stop(job_id: str, address: Annotated[Optional[str], typer.Option(help=ADDRESS_HELP)] = None) -> None:
    """Stop a submitted job; rows already written stay, and submitting it again resumes."""
    from mpq import cluster

    with _cluster(address, job_id):
        c = cluster.client(address)
        if c.stop_job(job_id):
            typer.echo(f"{job_id}: stopping")
        else:
            typer.echo(f"{job_id}: already ended ({c.get_job_status(job_id)}); nothing to stop")


@app.command()
def report(
    outputs: Annotated[list[str], typer.Argument(help="a job's output folder or URI (the one holding results/); several: one report comparing them")],
    to: Annotated[Optional[Path], typer.Option("--to", help="where to write the report (default: OUTPUT/report for one output; needed for several)")] = None,
    resamples: Annotated[int, typer.Option(help="bootstrap resamples for the intervals and Monte Carlo permutations for the tests (0: none)")] = 1000,
    seed: Annotated[int, typer.Option(help="bootstrap seed")] = 0,
    min_settings: Annotated[int, typer.Option(help="settings a codec needs for BD-rate")] = 4,
    target: Annotated[Optional[list[float]], typer.Option(help="a rate for the equal-rate section, in bpp (images) or kbps (audio); repeat it (default: three per dataset)")] = None,
    include_flagged: Annotated[bool, typer.Option(help="keep rows a pipeline check flagged (random weights) in the conclusions and figures")] = False,
) -> None:
    """The metric ranking, codecs at equal rate, summary tables, metric↔task correlations,
    machine BD-rate and figures, as CSV, Markdown, LaTeX, PNG/SVG/PDF and one self-contained
    HTML file. Several outputs make one report, each row marked with its output."""
    from mpq.analysis import write_report

    if to is None and len(outputs) > 1:
        _fail("several outputs: name a folder for the report with --to")
    if to is None and "://" in outputs[0]:
        _fail(f"{outputs[0]} is remote: name a local folder for the report with --to")
    try:
        path = write_report(outputs[0] if len(outputs) == 1 else outputs, to or Path(outputs[0]) / "report", n_resamples=resamples, seed=seed,
                            min_settings=min_settings, targets=target or None, include_flagged=include_flagged)
    except ValueError as exc:
        _fail(str(exc))
    typer.echo(f"report: {path}")


@app.command("list")
def list_components() -> None:
    """Print every registered source, codec, task and metric."""
    from mpq import registry

    for kind in registry.KINDS:
        typer.secho(f"{kind}s", bold=True)
        for name, cls in registry.items(kind):
            doc = (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else ""
            typer.echo(f"  {name:<14} {cls.modality:<6} {doc}")


if __name__ == "__main__":
    app()
