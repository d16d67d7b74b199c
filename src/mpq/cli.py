"""`mpq-ray`: run jobs locally or on a Ray cluster, list what is registered."""

from __future__ import annotations

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
) -> None:
    """Run a job; a second run on the same output resumes, skipping rows already written."""
    from mpq.sources.hf import AssetUnavailable
    from mpq.spec import JobSpecError, load_job

    try:
        job = load_job(job_file)
    except JobSpecError as exc:
        _fail(str(exc))
    from mpq.runner import run_job
    from mpq.summary import print_summary, read_results

    out = output or job.output or f"out/{job.name}"
    try:
        stats = run_job(job, out, engine=engine, limit=limit, address=address, progress=progress)
    except (AssetUnavailable, FileNotFoundError, ValueError) as exc:
        _fail(f"{job_file}: {exc}")
    typer.echo(
        f"{stats.written} rows written ({stats.errors} with errors), {stats.already_done} already there; results in {out}/results"
    )
    print_summary(read_results(out))


@app.command()
def report(
    output: Annotated[str, typer.Argument(help="a job's output folder or URI (the one holding results/)")],
    to: Annotated[Optional[Path], typer.Option("--to", help="where to write the report (default: OUTPUT/report)")] = None,
    resamples: Annotated[int, typer.Option(help="bootstrap resamples for the correlation intervals (0: none)")] = 1000,
    seed: Annotated[int, typer.Option(help="bootstrap seed")] = 0,
    min_settings: Annotated[int, typer.Option(help="settings a codec needs for BD-rate")] = 4,
) -> None:
    """Summary tables, metric↔task correlations, machine BD-rate and plots, as Markdown, CSV,
    PNG and one self-contained HTML file."""
    from mpq.analysis import write_report

    if to is None and "://" in output:
        _fail(f"{output} is remote: name a local folder for the report with --to")
    try:
        path = write_report(output, to or Path(output) / "report", n_resamples=resamples, seed=seed, min_settings=min_settings)
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
