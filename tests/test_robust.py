"""Inputs and failures that used to kill a run: they cost one error row, or nothing."""

import numpy as np
import pytest
from helpers import cli, ray_run_env

from mpq import registry
from mpq.media import Image

# Shapes an image processor that guesses the channel axis takes for channels-first.
TINY_SHAPES = [(1, 1, 3), (3, 1, 3), (1, 3, 3), (3, 3, 3)]


def task(name: str, **options):
    cls = registry.get("task", name)
    t = cls(cls.Options(**options), "cpu", "fp32")
    t.load()
    return t


def test_classifier_takes_images_of_one_pixel_and_other_tiny_shapes():
    t = task("classify", model="builtin:tiny-vit")
    images = [Image(np.full(shape, 100, np.uint8)) for shape in TINY_SHAPES]
    rows = t.predict(images, ["cat"] * len(images))
    assert len(rows) == len(images) and all(r["prediction"] for r in rows)


def test_segmenter_takes_images_of_one_pixel_and_other_tiny_shapes(tiny_segformer):
    t = task("segment", model=tiny_segformer)
    images = [Image(np.full(shape, 100, np.uint8)) for shape in TINY_SHAPES]
    rows = t.predict(images, [np.ones(s[:2], np.uint8) for s in TINY_SHAPES])  # class 1: valid after reduce_labels
    assert [r["pixels_valid"] for r in rows] == [s[0] * s[1] for s in TINY_SHAPES]


def test_detector_takes_images_of_one_pixel_and_other_tiny_shapes():
    t = task("detect", model="builtin:tiny-detr", threshold=0.0)
    images = [Image(np.full(shape, 100, np.uint8)) for shape in TINY_SHAPES]
    rows = t.predict(images, [{"boxes": [[0.0, 0.0, s[1], s[0]]], "labels": ["cat"]} for s in TINY_SHAPES])
    assert len(rows) == len(images) and all(len(r["det_boxes"]) == 8 and r["score"] is not None for r in rows)


def unboxed(stderr: str) -> str:
    """The end of a failed run's stderr without the frames of rich's traceback boxes."""
    return "\n".join(line for line in stderr.splitlines() if "│" not in line)[-3000:]


VERBOSE_JOB = {
    "name": "verbose",
    "datasets": [{"name": "skimage", "source": {"samples": "skimage"}}],
    "codecs": [{"name": "jpeg", "settings": [50]}],
    "tasks": [{"name": "classify", "model": "builtin:tiny-vit", "batch_size": 2}],
    "metrics": ["psnr"],
}


@pytest.mark.slow
def test_ray_run_is_quiet_by_default_and_verbose_shows_rays_output(ray_poison_run, ray_head, tmp_path):
    import yaml

    # Quiet: `mpq-ray run` without --verbose, as the Ray poison run below runs (its own cluster,
    # as on a machine without one; a worker writes the tiny model afresh, in its own cache, as a
    # first run on a machine does; workers die, which Ray's core worker logs). The smoke job's
    # log on a cluster is checked in test_realstudy.
    _, quiet = ray_poison_run[:2]
    assert quiet.returncode == 0 and quiet.stderr == "", quiet.stderr[-3000:]
    assert "rows written" in quiet.stdout and "summary" in quiet.stdout
    # Verbose: one sample, on the session's cluster, through a task whose tiny model a worker
    # writes afresh (its own cache).
    job = tmp_path / "verbose.yaml"
    job.write_text(yaml.safe_dump(VERBOSE_JOB))
    loud = cli("run", str(job), "--limit", "1", "--no-progress", "--output", str(tmp_path / "a"), "--verbose", "--engine", "ray",
               env=ray_run_env(ray_head, MPQ_CACHE=str(tmp_path / "c1")))
    assert loud.returncode == 0, unboxed(loud.stderr)
    assert "core_worker.cc" in loud.stderr and "Writing model shards" in loud.stderr
    assert "2 rows written (0 with errors)" in loud.stdout and "summary" in loud.stdout


# --- a sample that kills its worker ---------------------------------------------------------

POISON_PLUGIN = '''
"""A test-only codec: JPEG, except that it kills its own process on an image of one size."""
import os
import signal

from mpq.codecs.image import JPEG
from mpq.components import Options


class PoisonOptions(Options):
    height: int = 7  # the poison sample's height


class Poison(JPEG):
    Options = PoisonOptions

    def roundtrip(self, media, setting):
        if media.height == self.options.height:
            os.kill(os.getpid(), signal.SIGKILL)  # as the kernel's OOM killer or a segfault would
        return super().roundtrip(media, setting)
'''


def write_poison_plugin(site):
    """The codec, registered as a plugin through the `mpq.codecs` entry point group, as an
    installed package registers it; PYTHONPATH names it to the run and its Ray workers."""
    (site / "mpq_poison-0.0.dist-info").mkdir(parents=True)
    (site / "mpq_poison.py").write_text(POISON_PLUGIN)
    (site / "mpq_poison-0.0.dist-info" / "METADATA").write_text("Metadata-Version: 2.1\nName: mpq-poison\nVersion: 0.0\n")
    (site / "mpq_poison-0.0.dist-info" / "entry_points.txt").write_text("[mpq.codecs]\npoison = mpq_poison:Poison\n")
    return site


def write_poison_job(root, datasets: dict[str, list[str]], **spec):
    """A job of folders of photos (names from ``a.png``, ``b-poison.png``, ``c.png``); the
    poison one is 7 pixels high."""
    import yaml
    from helpers import photo
    from PIL import Image

    for name, files in datasets.items():
        (root / name).mkdir()
        for f in files:
            Image.fromarray(photo(7 if "poison" in f else 16, 16)).save(root / name / f)
    job = root / "poison.yaml"
    job.write_text(yaml.safe_dump({
        "name": "poison",
        "datasets": [{"name": name, "source": {"folder": str(root / name)}} for name in datasets],
        "codecs": [{"name": "poison", "settings": [50, 80]}],
        "metrics": ["psnr"],
        **spec,
    }))
    return job


def read_rows(out):
    from mpq.reading import read_results

    return {(r["dataset"], r["sample_id"], r["codec"], r["setting"]): r["error"] for r in read_results(str(out)).iter_rows(named=True)}


def run_poison(job, out, site, *args, **env):
    import os

    path = os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")]))
    return cli("run", str(job), "--output", str(out), "--no-progress", *args, env={"PYTHONPATH": path, "MPQ_FLUSH_ROWS": "1", **env})


def assert_poison_costs_its_rows_only(out, dataset: str, images: int, rows_in_run: int):
    from helpers import rows_on_disk

    rows = read_rows(out)
    assert len(rows) == rows_on_disk(out) == rows_in_run  # none twice
    mine = {k[1:]: e for k, e in rows.items() if k[0] == dataset}
    assert len(mine) == images * 3  # (baseline + 2 settings) an image
    died = {k: e for k, e in mine.items() if e is not None}
    # Every row of the sample: its work (all codec settings, baseline included) goes as one.
    assert set(died) == {("b-poison.png", "none", ""), ("b-poison.png", "poison", "50"), ("b-poison.png", "poison", "80")}
    assert all(e.startswith("worker died: ") for e in died.values()), died


@pytest.mark.slow
def test_serial_sample_that_kills_the_process_is_tried_3_times_then_an_error_row(tmp_path):
    from mpq.engine.inflight import TRIES

    site = write_poison_plugin(tmp_path / "site")
    job = write_poison_job(tmp_path, {"imgs": ["a.png", "b-poison.png", "c.png"]})
    out = tmp_path / "out"
    assert TRIES == 3
    for _ in range(TRIES):  # the codec kills the run itself, and again on each resume
        died = run_poison(job, out, site, "--engine", "serial")
        assert died.returncode == -9, died.stderr[-3000:]
    last = run_poison(job, out, site, "--engine", "serial")
    assert last.returncode == 0, last.stderr[-3000:]
    assert "3 with errors" in last.stdout
    assert_poison_costs_its_rows_only(out, "imgs", 3, 9)
    again = run_poison(job, out, site, "--engine", "serial")
    assert again.returncode == 0 and "0 rows written" in again.stdout  # worker-died rows count as done


@pytest.fixture(scope="module")
def ray_poison_run(tmp_path_factory):
    """One Ray run for both Ray cases, each a dataset of its own (a sample's tries are noted per
    dataset and sample): `alone`, the poison sample in a block of its own (as a small dataset's
    samples travel by default); `several`, cheap images that travel 3 to a block, all in one.
    Its good samples go through a task whose tiny model a worker writes in the run's own cache
    (output of the model library's, which the quiet test above checks stays out of sight)."""
    root = tmp_path_factory.mktemp("poison-ray")
    site = write_poison_plugin(root / "site")
    job = write_poison_job(root, {"alone": ["b-poison.png"], "several": ["a.png", "b-poison.png", "c.png"]},
                           resources={"samples_per_block": 3}, tasks=[{"name": "classify", "model": "builtin:tiny-vit"}])
    out = root / "out"
    return out, run_poison(job, out, site, "--engine", "ray", MPQ_CACHE=str(root / "cache")), job


def blocks(job) -> dict[str, list[int]]:
    """Samples per block of each dataset, as the Ray engine cuts the job (the plugin, registered
    in the run's processes only, read as the JPEG it is: it runs on the CPU alike)."""
    import yaml

    from mpq.engine.plan import shards
    from mpq.job import resolve
    from mpq.spec import parse_job

    spec = yaml.safe_load(job.read_text())
    cut: dict[str, list[int]] = {}
    for s in shards(resolve(parse_job({**spec, "codecs": [{**c, "name": "jpeg"} for c in spec["codecs"]]}))):
        cut.setdefault(s.dataset, []).append(s.stop - s.start)
    return cut


@pytest.mark.slow
def test_ray_sample_that_kills_its_worker_costs_its_rows_and_the_job_completes(ray_poison_run):
    out, res, job = ray_poison_run
    assert blocks(job)["alone"] == [1]
    assert res.returncode == 0, res.stderr[-3000:]
    assert "12 rows written (6 with errors)" in res.stdout
    assert_poison_costs_its_rows_only(out, "alone", 1, 12)


@pytest.mark.slow
def test_ray_sample_that_kills_its_worker_in_a_block_of_several_costs_only_its_own_rows(ray_poison_run):
    """Cheap images travel 32 to a block: the poison sample's block-mates are redone, not lost."""
    out, res, job = ray_poison_run
    assert blocks(job)["several"] == [3]
    assert res.returncode == 0, res.stderr[-3000:]
    assert_poison_costs_its_rows_only(out, "several", 3, 12)

KILLED_TRY = """
import os, signal, sys
from mpq.engine.inflight import InFlight

InFlight(sys.argv[1], run_id=sys.argv[2]).run([{"dataset": "d", "sample_id": "s"}], lambda rows: os.kill(os.getpid(), signal.SIGKILL))
"""


def test_an_orderly_stop_sets_back_only_the_tries_its_run_has_in_hand(tmp_path):
    """Ray kills a stopped run's workers without letting them clean up: the runner then sets back
    the tries noted by that run (inflight.forget), not earlier runs' nor a spent sample's."""
    import subprocess
    import sys

    from mpq.engine.inflight import InFlight, forget

    def killed_try(run_id):
        assert subprocess.run([sys.executable, "-c", KILLED_TRY, str(tmp_path), run_id]).returncode == -9

    killed_try("earlier")  # a worker that died: a try spent
    killed_try("this")  # work in hand when this run was stopped
    note, = (tmp_path / "in-flight").iterdir()
    assert note.read_text() == "2 this"
    forget(str(tmp_path), "other")
    assert note.read_text() == "2 this"
    forget(str(tmp_path), "this")
    assert note.read_text() == "1"
    # Work that an exception ends (a stop the process lived to see) sets its note back as it was.
    with pytest.raises(KeyboardInterrupt):
        InFlight(str(tmp_path), run_id="next").run([{"dataset": "d", "sample_id": "s"}], lambda rows: (_ for _ in ()).throw(KeyboardInterrupt))
    assert note.read_text() == "1"
    killed_try("a")
    killed_try("b")
    rows = InFlight(str(tmp_path), run_id="last").run([{"dataset": "d", "sample_id": "s"}], lambda rows: rows)
    assert rows[0]["error"].startswith("worker died: ")  # spent after 3 tries
    forget(str(tmp_path), "b")
    forget(str(tmp_path), "last")
    assert note.read_text() == "3 spent"


def test_a_try_noted_by_a_stopped_runs_worker_after_its_stop_does_not_count(tmp_path):
    """On a cluster the run joined, Ray ends a stopped run's workers when its driver exits,
    after the runner has set back the run's tries: a worker that starts a sample in that moment
    notes a try no one sets back (seen: test_engine's stopped Ray run left "1 RUN"). The next run
    sets it back before it starts: a sample with two tries spent and one noted so is computed,
    not given up."""
    from helpers import photo
    from PIL import Image

    from mpq.engine.inflight import InFlight, forget
    from mpq.reading import read_results
    from mpq.runner import run_job
    from mpq.spec import parse_job

    folder = tmp_path / "imgs"
    folder.mkdir()
    Image.fromarray(photo(16, 16)).save(folder / "a.png")
    job = parse_job({"name": "late", "datasets": [{"name": "imgs", "source": {"folder": str(folder)}}],
                     "codecs": [{"name": "jpeg", "settings": [50]}], "metrics": ["psnr"]})
    out = tmp_path / "out"
    for run in ("crashed-1", "crashed-2"):  # two runs whose process died working on the photo
        InFlight(str(out), run_id=run)._note("imgs/a.png")
    forget(str(out), "stopped")  # a run stopped in order, its tries set back...
    InFlight(str(out), run_id="stopped")._note("imgs/a.png")  # ...then its worker, not ended yet, started the photo
    note, = (out / "in-flight").glob("0-*")
    assert note.read_text() == "3 stopped"
    run_job(job, str(out), engine="serial", progress=False)
    df = read_results(str(out))
    assert df.height == 2 and df["error"].is_null().all(), df["error"].to_list()
    assert not any((out / "in-flight").iterdir())


# --- bounded memory per sample --------------------------------------------------------------


def test_inputs_over_the_jobs_size_limits_become_error_rows_before_any_work(tmp_path):
    from helpers import photo
    from PIL import Image

    from mpq.reading import read_results
    from mpq.runner import run_job
    from mpq.spec import parse_job

    folder = tmp_path / "imgs"
    folder.mkdir()
    Image.fromarray(photo(16, 16)).save(folder / "small.png")  # 256 pixels
    Image.fromarray(photo(20, 16)).save(folder / "large.png")  # 320 pixels
    job = parse_job({
        "name": "limits", "max_pixels": 300,
        "datasets": [{"name": "imgs", "source": {"folder": str(folder)}}],
        "codecs": [{"name": "jpeg", "settings": [50]}], "metrics": ["psnr"],
    })
    run_job(job, str(tmp_path / "out"), engine="serial", progress=False)
    rows = {(r["sample_id"], r["codec"]): r for r in read_results(str(tmp_path / "out")).iter_rows(named=True)}
    assert len(rows) == 4
    for codec in ("none", "jpeg"):
        assert rows[("small.png", codec)]["error"] is None
        assert rows[("large.png", codec)]["error"] == "load: too large: 16×20 = 320 pixels, over the job's max_pixels (300)"
        assert rows[("large.png", codec)]["bits"] is None and rows[("large.png", codec)]["height"] == 20
    assert rows[("small.png", "jpeg")]["psnr"] is not None
    assert parse_job({**job.model_dump(exclude_none=True), "max_pixels": None}).max_pixels is None  # no limit
