"""Error rows are redone on request: `run --redo KIND` computes again the rows whose error is of
that kind, and the new rows supersede the old (one row per key on read); the run's summary
lists the error kinds."""

import pytest
from helpers import encode, photo, rows_on_disk
from PIL import Image
from typer.testing import CliRunner

from mpq.cli import app
from mpq.reading import error_kinds, read_results
from mpq.results import check_redo, error_kind, retryable
from mpq.runner import run_job
from mpq.spec import parse_job


@pytest.fixture
def folder_with_a_truncated_png(tmp_path):
    root = tmp_path / "photos"
    root.mkdir()
    good = encode(Image.fromarray(photo(32, 32)), "PNG")
    (root / "good.png").write_bytes(good)
    (root / "bad.png").write_bytes(good[: len(good) // 2])
    return root, good


def job(root):
    return parse_job({
        "name": "redo", "datasets": [{"name": "d", "source": {"folder": str(root)}}],
        "codecs": [{"name": "jpeg", "settings": [30, 60]}], "metrics": ["psnr"],
    })


@pytest.mark.slow  # two runs through the serial engine (torch is imported)
def test_redo_load_computes_a_fixed_file_again_and_its_rows_supersede_the_error_rows(folder_with_a_truncated_png, tmp_path):
    root, good = folder_with_a_truncated_png
    out = str(tmp_path / "out")
    first = run_job(job(root), out, engine="serial", progress=False)
    assert (first.written, first.errors) == (6, 3)
    kinds = error_kinds(read_results(out))
    assert kinds["kind"].to_list() == ["load"] and kinds["rows"].to_list() == [3] and kinds["sample_id"].to_list() == ["bad.png"]

    (root / "bad.png").write_bytes(good)  # fixed
    assert run_job(job(root), out, engine="serial", progress=False).written == 0  # error rows are done...
    assert run_job(job(root), out, engine="serial", progress=False, redo=("codec", "worker died")).written == 0  # ...but of the kinds asked for
    again = run_job(job(root), out, engine="serial", progress=False, redo=("load",))
    assert (again.written, again.errors, again.already_done) == (3, 0, 3)

    df = read_results(out)
    assert df.height == 6 and df["error"].null_count() == 6 and df.filter(df["sample_id"] == "bad.png")["psnr"].null_count() == 1  # the baseline's
    assert rows_on_disk(out) == 9  # the 3 error rows are superseded, not removed
    assert run_job(job(root), out, engine="serial", progress=False, redo=("all",)).written == 0  # no error rows left


def test_error_kinds_and_what_redo_matches():
    assert error_kind("load: UnidentifiedImageError: cannot identify image file") == "load"
    assert error_kind("metric lpips: RuntimeError: x") == "metric lpips"
    assert error_kind("worker died: the worker was killed 3 times") == "worker died"
    assert error_kind("infra: task: OutOfMemoryError: CUDA") == "infra: task"
    assert retryable("metric lpips: RuntimeError: x", redo=("metric",)) and retryable("metric lpips: x", redo=("metric lpips",))
    assert not retryable("metric lpips: x", redo=("metric psnr",)) and not retryable("metrics: x", redo=("metric",))
    assert retryable("codec: ValueError: x", redo=("all",)) and not retryable("codec: ValueError: x") and not retryable(None, redo=("all",))
    check_redo(("load", "metric lpips", "task agreement", "worker died", "all"))
    with pytest.raises(ValueError, match="no error is of kind 'lod'; valid kinds: load, codec"):
        check_redo(("load", "lod"))


@pytest.mark.slow
def test_the_cli_summary_lists_error_kinds_with_an_example_and_redo_recomputes_them(folder_with_a_truncated_png, tmp_path):
    root, good = folder_with_a_truncated_png
    job_file = tmp_path / "job.yaml"
    job_file.write_text(
        f"name: redo\noutput: {tmp_path / 'out'}\ndatasets: [{{name: d, source: {{folder: {root}}}}}]\n"
        "codecs: [{name: jpeg, settings: [30, 60]}]\nmetrics: [psnr]\n"
    )

    def run(*args):
        res = CliRunner().invoke(app, ["run", str(job_file), "--engine", "serial", "--no-progress", *args])
        assert res.exit_code == 0, res.output
        return res.stdout

    first = run()
    assert "errors: load: 3 row(s), e.g. bad.png: load: " in first and "--redo KIND" in first
    (root / "bad.png").write_bytes(good)
    second = run("--redo", "load")
    assert second.startswith("3 rows written (0 with errors), 3 already there") and "errors:" not in second
