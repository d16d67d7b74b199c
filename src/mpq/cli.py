"""`mpq-ray`: run jobs locally or on a Ray cluster, list what is registered."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from pathlib import Path
from typing import Annotated, Optional

import typer

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Machine perceptual quality: what lossy compression does to the models that consume it.")


def _fail(message: str) -> None:
    typer.secho(message, fg=typer.colors.RED, err=True)
    raise typer.Exit(2)


def _check_limit(limit: int | None) -> None:
    if limit is not None and limit < 1:
        _fail(f"--limit must be 1 or more, got {limit}")


def _version(value: bool) -> None:
    if not value:
        return
    from importlib.metadata import PackageNotFoundError, version

    import mpq

    libs = []
    for lib in ("ray", "torch", "transformers", "timm", "pyarrow", "polars"):
        try:
            libs.append(f"{lib} {version(lib)}")
        except PackageNotFoundError:
            libs.append(f"{lib} not installed")
    typer.echo(f"mpq {mpq.__version__}\n" + ", ".join(libs))
    raise typer.Exit()


@app.callback()
def main(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True, help="print mpq's version and its key libraries' and exit")] = False,
) -> None:
    """Machine perceptual quality: what lossy compression does to the models that consume it."""


@app.command()
def run(
    job_file: Annotated[Path, typer.Argument(help="job YAML, e.g. jobs/smoke.yaml")],
    output: Annotated[Optional[str], typer.Option("--output", "-o", help="results folder or URI (default: the job's `output`, else out/<name>)")] = None,
    engine: Annotated[str, typer.Option(help="auto (serial on a machine of few CPUs, no GPU and no --address; else ray), ray (streaming, parallel) or serial (one process)")] = "auto",
    limit: Annotated[Optional[int], typer.Option(help="at most this many samples per dataset")] = None,
    address: Annotated[Optional[str], typer.Option(help="Ray cluster address (default: RAY_ADDRESS, else an embedded local Ray)")] = None,
    progress: Annotated[bool, typer.Option(help="show a progress bar")] = True,
    force: Annotated[bool, typer.Option(help="take over the output's lease from a run that is gone")] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="also show Ray's and the models' own output (by default it stays in Ray's log folder)")] = False,
    redo: Annotated[Optional[list[str]], typer.Option(help="compute again the error rows of this kind: load, codec, task, metric (or metric NAME), worker died, or all; repeatable")] = None,
    log_to: Annotated[Optional[str], typer.Option("--log-to", help="log the job's parameters and the summary's numbers to a tracker: mlflow (the extra mpq[mlflow])")] = None,
) -> None:
    """Run a job; a second run on the same output resumes, skipping rows already written."""
    _check_limit(limit)
    if log_to is not None:
        from mpq.tracking import check_tracker

        try:
            check_tracker(log_to)
        except ValueError as exc:
            _fail(str(exc))
    if verbose:
        os.environ["MPQ_VERBOSE"] = "1"  # read by the Ray engine
    else:  # the models' progress bars (a built-in model written on a first run) stay out of sight
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    from mpq.components import AssetUnavailable
    from mpq.lease import LeaseHeld, LeaseLost
    from mpq.spec import JobSpecError, load_job

    try:
        job = load_job(job_file)
    except JobSpecError as exc:
        _fail(str(exc))
    from mpq.printing import print_summary
    from mpq.reading import read_results
    from mpq.runner import run_job, stop

    out = output or job.output or f"out/{job.name}"
    for sig in (signal.SIGINT, signal.SIGTERM):  # an orderly stop: the interrupted work's tries not counted
        signal.signal(sig, stop)
    try:
        stats = run_job(job, out, engine=engine, limit=limit, address=address, progress=progress, force=force, redo=tuple(redo or ()))
    except KeyboardInterrupt as exc:  # runner.Interrupted once rows flow, else before any
        typer.echo(f"interrupted: {getattr(exc, 'written', 0)} rows written; run the same command to resume", err=True)
        raise typer.Exit(130)
    except (LeaseHeld, LeaseLost) as exc:
        _fail(str(exc))
    except (AssetUnavailable, OSError, ValueError) as exc:  # OSError: an output that cannot be written
        _fail(f"{job_file}: {exc}")
    typer.echo(
        f"{stats.written} rows written ({stats.errors} with errors), {stats.already_done} already there; "
        f"{stats.samples} samples in {stats.seconds:.0f} s; engine: {stats.engine} ({stats.why}); results in {out}/results"
    )
    print_summary(read_results(out))
    if log_to is not None:
        from mpq.tracking import log_run

        try:
            typer.echo(f"logged to {log_to}: run {log_run(log_to, job, out, stats, limit)}")
        except Exception as exc:  # the tracker's own refusal (store, server); the results are written
            _fail(f"--log-to {log_to}: not logged ({type(exc).__name__}: {' '.join(str(exc).split())}); results in {out}/results")


@app.command()
def plan(
    job_file: Annotated[Path, typer.Argument(help="job YAML, e.g. jobs/smoke.yaml")],
    output: Annotated[Optional[str], typer.Option("--output", "-o", help="results folder or URI (default: the job's `output`, else out/<name>)")] = None,
    limit: Annotated[Optional[int], typer.Option(help="at most this many samples per dataset")] = None,
    redo: Annotated[Optional[list[str]], typer.Option(help="count the error rows of this kind as to do, as `run --redo`; repeatable")] = None,
    calibrate: Annotated[bool, typer.Option(help="time a few samples per dataset through each stage for an estimate (--no-calibrate: counts only)")] = True,
    samples: Annotated[int, typer.Option(help="samples per dataset the calibration runs")] = 2,
) -> None:
    """Print what `run` would compute: rows and samples per dataset, codec and task, rows already
    in the output, and an estimate of the time per stage. Writes nothing into the output."""
    _check_limit(limit)
    if samples < 1:
        _fail(f"--samples must be 1 or more, got {samples}")
    from rich.console import Console
    from rich.table import Table

    from mpq.components import AssetUnavailable
    from mpq.preview import calibrate as calibrate_on

    job, found = _plan(job_file, output, limit, tuple(redo or ()), samples)
    table = Table(title=f"plan of {job.name} into {output or job.output or f'out/{job.name}'}")
    for col in ("dataset", "codec", "settings", "task", "samples to do", "rows to do", "rows done"):
        table.add_column(col, justify="left" if col in ("dataset", "codec", "task") else "right")
    for line in found.lines:
        table.add_row(line.dataset, line.codec, str(line.settings), line.task or "(none)", str(line.samples), str(line.todo), str(line.done))
    console = Console(width=160)
    console.print(table)
    typer.echo(f"{found.todo} rows to compute for {sum(found.samples.values())} samples; {found.done} rows already done")
    if not calibrate or not found.todo:
        return
    from mpq.job import resolve
    from mpq.runner import preflight

    resolved = resolve(job)
    try:
        preflight(resolved)  # offline and not cached: one line, as `run` says it
    except AssetUnavailable as exc:
        _fail(f"{job_file}: {exc}")
    start = time.monotonic()
    estimate = calibrate_on(resolved, found)
    typer.echo(f"estimate for the serial engine on this machine, from {estimate.samples} samples (calibration took {time.monotonic() - start:.0f} s):")
    typer.echo(f"  setup (models, codecs, metrics loaded once): {estimate.setup:.1f} s; first calls of the stages (once): {estimate.first_use:.1f} s")
    for dataset, times in estimate.per_sample.items():
        typer.echo(f"  {dataset}: " + ", ".join(f"{stage} {t:.3g} s" for stage, t in times.items()) + " per sample")
    typer.echo(f"  total: about {_duration(estimate.total)} (an estimate on this machine; the Ray engine runs stages in parallel)")


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.0f} min" if seconds < 7200 else f"{seconds / 3600:.1f} h"


@app.command()
def fetch(
    job_file: Annotated[Path, typer.Argument(help="job YAML, e.g. jobs/beans.yaml")],
    cache_dir: Annotated[Optional[Path], typer.Option(help="fill caches under this folder (huggingface/, torch/) instead of the usual ones")] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="also show the libraries' own warnings and logs")] = False,
) -> None:
    """Download every model, checkpoint and dataset the job names into the library caches,
    so that a machine without network access then runs the job with HF_HUB_OFFLINE=1.
    With HF_HUB_OFFLINE=1 set, it only checks what the caches hold."""
    if cache_dir is not None:  # before any library reads its cache location
        cache_dir = cache_dir.resolve()
        os.environ["HF_HOME"] = str(cache_dir / "huggingface")
        os.environ["TORCH_HOME"] = str(cache_dir / "torch")
        for var in ("HF_HUB_CACHE", "HF_DATASETS_CACHE"):  # would win over HF_HOME
            os.environ.pop(var, None)
    if not verbose:  # the libraries' deprecations and retries say nothing the lines below don't
        import logging
        import warnings

        warnings.simplefilter("ignore")
        logging.disable(logging.WARNING)
    unreachable = None if os.environ.get("HF_HUB_OFFLINE", "").strip() else _hub_unreachable()
    if unreachable:  # the hub's client would retry every download for minutes: check the caches instead
        os.environ["HF_HUB_OFFLINE"] = "1"  # before huggingface_hub is imported, which reads it once
    from mpq.components import AssetUnavailable, cache_home, offline
    from mpq.job import resolve
    from mpq.spec import JobSpecError, load_job

    try:
        assets = resolve(load_job(job_file)).assets()
    except JobSpecError as exc:
        _fail(str(exc))
    missing = 0
    for asset in assets:
        try:
            asset.check() if offline() else asset.fetch()
        except AssetUnavailable as exc:
            missing += 1
            reason = unreachable or (exc.reason if not offline() else None)
            typer.secho(f"  missing  {asset}" + (f" ({reason})" if reason else ""), fg=typer.colors.RED)
        else:
            typer.echo(f"  cached   {asset}")
    caches = f"HF_HOME={cache_home('model')} TORCH_HOME={cache_home('checkpoint')}"
    if missing:
        why = ("HF_HUB_OFFLINE is set, so nothing was downloaded; unset it and run this again" if offline() and not unreachable
               else "they could not be downloaded from here; run this again")
        _fail(f"{missing} of {len(assets)} assets missing: {why} where the hub is reachable, or copy a cache filled there to {caches}")
    typer.echo(f"{len(assets)} assets cached" + ("" if assets else " (the job downloads nothing)"))
    if cache_dir is not None:
        typer.echo(f"to run from this cache: {caches} HF_HUB_OFFLINE=1")


def _hub_unreachable() -> str | None:
    """Why the Hugging Face hub (``HF_ENDPOINT``) cannot be reached from here, after one request
    of at most 5 s, or None when it answers."""
    import urllib.error
    import urllib.request

    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")
    try:
        urllib.request.urlopen(urllib.request.Request(endpoint, method="HEAD"), timeout=5).close()
    except urllib.error.HTTPError:
        return None  # it answered
    except OSError as exc:
        return f"the hub at {endpoint} is not reachable: {getattr(exc, 'reason', exc)}"
    return None


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
    redo: Annotated[Optional[list[str]], typer.Option(help="compute again the error rows of this kind, as `run --redo`; repeatable")] = None,
) -> None:
    """Run a job on a Ray cluster through the Jobs API; prints the job id and where results land."""
    _check_limit(limit)
    from mpq import cluster
    from mpq.results import check_redo
    from mpq.spec import JobSpecError, load_job

    try:
        check_redo(tuple(redo or ()))
    except ValueError as exc:
        _fail(str(exc))
    try:
        job = load_job(job_file)
        out = cluster.shared_output(job, output)
    except (JobSpecError, ValueError) as exc:
        _fail(f"{job_file}: {exc}")
    pairs = [e.partition("=") for e in env or []]
    if any(not sep or not k for k, sep, _ in pairs):
        _fail(f"--env takes KEY=VALUE, got {env}")
    with _cluster(address):
        job_id = cluster.submit(job_file, job, out, address, limit, {k: v for k, _, v in pairs}, force, tuple(redo or ()))
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
def status(
    target: Annotated[str, typer.Argument(help="an output (a folder or URI holding results/) or a submitted job's id")],
    address: Annotated[Optional[str], typer.Option(help=ADDRESS_HELP)] = None,
    job_file: Annotated[Optional[Path], typer.Option("--job", help="an output's job YAML: also print what is still to do")] = None,
    limit: Annotated[Optional[int], typer.Option(help="with --job: at most this many samples per dataset, as `run --limit`")] = None,
) -> None:
    """An output's rows done and error rows by kind (a URI, or a folder that exists), else a
    submitted job's status (PENDING, RUNNING, SUCCEEDED, FAILED, STOPPED)."""
    if Path(target).is_file():
        _fail(f"{target} is a file: status takes an output (folder or URI) or a job id; a job file goes with --job")
    if "://" in target or Path(target).exists():
        _output_status(target, job_file, limit)
        return
    if job_file is not None:
        _fail(f"{target}: no such output folder (--job is for an output; a job id's status needs none)")
    job_id = target
    from mpq import cluster

    with _cluster(address, job_id):
        info = cluster.client(address).get_job_info(job_id)
    typer.echo(f"{job_id}: {info.status}" + (f" ({info.message})" if info.message else ""))


def _output_status(output: str, job_file: Path | None, limit: int | None) -> None:
    from mpq.preview import output_state
    from mpq.results import LocationError

    _check_limit(limit)
    try:
        state = output_state(output)
    except LocationError as exc:
        _fail(str(exc))
    typer.echo(f"{output}: {state.rows} rows ({state.on_disk} in the files, superseded ones included)")
    for dataset, rows, errors in state.by_dataset:
        typer.echo(f"  {dataset}: {rows} rows, {errors} with errors")
    for kind, rows, sample, example in state.errors.iter_rows():
        typer.echo(f"  errors: {kind}: {rows} row(s), e.g. {sample}: {example[:200]}")
    typer.echo(f"lease: {state.holder} (a run writing now, or a killed one whose lease the next run takes over)"
               if state.holder else "no lease: no run is writing it")
    if job_file is not None:
        _, found = _plan(job_file, output, limit, ())
        left = [line for line in found.lines if line.todo]
        typer.echo(f"to do for {job_file}: {found.todo} rows of {sum(found.samples.values())} samples" + (":" if left else ""))
        for line in left:
            typer.echo(f"  {line.dataset} {line.codec} {line.task or '(none)'}: {line.todo} rows of {line.samples} samples")


def _plan(job_file: Path, output: str | None, limit: int | None, redo: tuple[str, ...], keep: int = 0):
    """The plan of a job file into ``output`` (default: the job's), or one line saying why not."""
    from mpq.preview import plan as plan_of
    from mpq.spec import JobSpecError, load_job

    try:
        job = load_job(job_file)
        return job, plan_of(job, output or job.output or f"out/{job.name}", limit, redo, keep)
    except JobSpecError as exc:
        _fail(str(exc))
    except (OSError, ValueError) as exc:
        _fail(f"{job_file}: {exc}")


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
def list_components(
    name: Annotated[Optional[str], typer.Argument(help="a component's name, e.g. jpeg: its options, their ranges and defaults")] = None,
) -> None:
    """Print every registered source, codec, task and metric, or one component's options."""
    from mpq import registry

    if name is None:
        for kind in registry.KINDS:
            typer.secho(f"{kind}s", bold=True)
            for key, cls in registry.items(kind):
                typer.echo(f"  {key:<16} {cls.modality:<6} {registry.description(cls)}")
        typer.echo("`mpq-ray list NAME` shows a component's options.")
        return
    found = [(kind, registry.get(kind, name)) for kind in registry.KINDS if name in registry.names(kind)]
    if not found:
        every = sorted({n for kind in registry.KINDS for n in registry.names(kind)})
        _fail(f"no component {name!r}; valid choices: {', '.join(every)}")
    for kind, cls in found:
        typer.echo("\n".join(_component_help(kind, name, cls)))


def _component_help(kind: str, name: str, cls: type) -> list[str]:
    """A component's description, the keys of its job-file entry (type, range, default) and,
    for a codec, its settings: the default sweep and the valid range."""
    from mpq import registry, targets
    from mpq.spec import TaskSpec

    lines = [f"{kind} {name} ({cls.modality}): {registry.description(cls)}"]
    fields = dict(cls.Options.model_fields)
    if kind == "task":  # the keys every task entry takes besides the model's own
        fields.update({k: f for k, f in TaskSpec.model_fields.items() if k != "name"})
    if kind == "codec":
        try:
            cls.check_setting(cls.__new__(cls), object())  # refused, naming the valid range
            valid = ""
        except ValueError as exc:
            valid = f" ({exc})"
        lines.append(f"  settings: default sweep {cls.default_settings}{valid}")
        keys = [k for k, (_, modality) in targets.TARGET_KEYS.items() if modality == cls.modality]
        if targets.knob(cls) is not None:
            lines.append(f"  {keys[0]}: target rates instead of settings, e.g. [0.1, 0.2]")
    lines.append("  options:" if fields else "  options: none")
    for key, field in fields.items():
        default = "required" if field.is_required() else f"default {field.get_default(call_default_factory=True)!r}"
        about = f" – {field.description}" if field.description else ""
        lines.append(f"    {key}: {_type_name(field.annotation)}{_bounds(field.metadata)}, {default}{about}")
    if cls.columns:
        lines.append(f"  columns: {', '.join(cls.columns)}")
    return lines


def _type_name(annotation) -> str:
    import typing

    if typing.get_origin(annotation) is typing.Literal:
        return "one of " + ", ".join(str(a) for a in typing.get_args(annotation))
    return getattr(annotation, "__name__", None) if isinstance(annotation, type) else str(annotation).replace("typing.", "")


def _bounds(metadata: list) -> str:
    """Pydantic's constraints as a range: " in [1, 100]", " > 0"."""
    found = {attr: getattr(m, attr) for m in metadata for attr in ("ge", "gt", "le", "lt") if hasattr(m, attr)}
    lo = next(((k, found[k]) for k in ("ge", "gt") if k in found), None)
    hi = next(((k, found[k]) for k in ("le", "lt") if k in found), None)
    if lo and hi:
        return f" in {'[' if lo[0] == 'ge' else '('}{lo[1]}, {hi[1]}{']' if hi[0] == 'le' else ')'}"
    ops = {"ge": ">=", "gt": ">", "le": "<=", "lt": "<"}
    return "".join(f" {ops[b[0]]} {b[1]}" for b in (lo, hi) if b)


if __name__ == "__main__":
    app()
