"""What the throughput work relies on: scaled sample sets and the Ray graph's actor pools."""

import numpy as np
import pytest

from mpq.engine.placement import groups, pool
from mpq.engine.stages import Measure, Predict
from mpq.job import resolve
from mpq.sources.samples import EmbeddedSamples, SamplesOptions
from mpq.spec import parse_job


def test_repeated_samples_are_distinct_deterministic_variants():
    source = EmbeddedSamples(SamplesOptions(samples="skimage", names=["chelsea", "coffee"], repeat=6))
    ids = source.ids()
    assert ids[:4] == ["chelsea", "coffee", "chelsea~1", "coffee~1"] and len(ids) == 12 == len(set(ids))
    chelsea = source.load("chelsea").media.pixels
    copies = [source.load(f"chelsea~{k}") for k in range(1, 6)]
    assert all(c.target == "chelsea" and c.media.pixels.shape == chelsea.shape for c in copies)
    pixels = [chelsea, *(c.media.pixels for c in copies)]
    assert all(not np.array_equal(a, b) for i, a in enumerate(pixels) for b in pixels[i + 1 :])
    assert np.array_equal(pixels[1], chelsea[:, ::-1])  # copy 1: mirrored
    assert np.array_equal(pixels[5], np.roll(chelsea[:, ::-1], 7, axis=1))  # copy 5: mirrored, shifted 7 px
    assert np.array_equal(source.load("chelsea~5").media.pixels, pixels[5])


def job(**resources):
    return resolve(parse_job({
        "name": "pools",
        "datasets": [{"name": "d", "source": {"samples": "skimage"}}],
        "codecs": [{"name": "jpeg", "settings": [10]}],
        "tasks": [{"name": "classify", "model": "builtin:tiny-vit", "batch_size": 32}, {"name": "classify", "id": "b"}],
        "metrics": ["psnr"],
        "resources": resources,
    }))


def test_without_gpus_models_and_metrics_share_one_actor_per_cpu():
    (group,) = groups(job(), has_gpu=False)
    assert [cls for cls, _ in group.specs] == [Predict, Predict, Measure]
    assert all(args[-1] == "cpu" for _, args in group.specs) and (group.cpus, group.gpus) == (1, 0)
    actors = pool(group, {"CPU": 2.0}, shared=False)
    assert (actors.min_size, actors.max_size) == (2, 2)
    (group,) = groups(job(codec_cpus=2, model_actors=[1, 3]), has_gpu=False)
    actors = pool(group, {"CPU": 8.0}, shared=False)
    assert group.cpus == 2 and (actors.min_size, actors.max_size) == (1, 3)  # the job's own setting wins


def test_with_gpus_models_batch_on_gpu_actors_and_metrics_stay_on_cpu():
    models, metrics = groups(job(model_gpus=0.5), has_gpu=True)
    # On a GPU actor the device is the one torch sees there (None: Predict's default), not "cuda" because Ray counts a GPU.
    assert [cls for cls, _ in models.specs] == [Predict, Predict] and all(a[-1] is None for _, a in models.specs)
    assert (models.cpus, models.gpus, models.batch_size) == (0, 0.5, 32)
    assert metrics.specs == [(Measure, (metrics.specs[0][1][0], "cpu"))] and (metrics.cpus, metrics.gpus) == (1, 0)
    actors = pool(models, {"CPU": 16.0, "GPU": 2.0}, shared=False)
    assert (actors.min_size, actors.max_size) == (4, 4)  # two GPUs, half a GPU each
    actors = pool(metrics, {"CPU": 16.0, "GPU": 2.0}, shared=True)  # beside coding tasks: autoscale
    assert (actors.min_size, actors.max_size) == (1, 16)
    (both,) = groups(job(metric_gpus=1), has_gpu=True)  # same resources: one actor holds models and metrics
    assert [cls for cls, _ in both.specs] == [Predict, Predict, Measure] and all(a[-1] is None for _, a in both.specs)



@pytest.mark.slow
def test_stages_go_to_the_resources_the_clusters_nodes_have():
    """On a real local cluster whose node declares one GPU and the custom resource `codec_node`:
    model actors ask for GPUs (metrics stay on CPU actors), codec tasks for `codec_node`, and a
    resource no node has (`other_node`) is left out of the ask, so that the tasks still find a node."""
    import ray

    import mpq.engine  # noqa: F401  first: it configures Ray before Ray reads its settings
    from mpq.engine.placement import available
    from mpq.engine.plan import Planner, shards
    from mpq.engine.ray import _dataset
    from mpq.engine.stages import Finalize

    ray.shutdown()
    ray.init(num_cpus=1, num_gpus=1, resources={"codec_node": 1}, logging_level="ERROR", log_to_driver=False,
             include_dashboard=False)
    try:
        assert available("GPU") and available("codec_node") and not available("other_node")
        placed = job(codec_resources={"codec_node": 1, "other_node": 2})
        ds = _dataset(placed, Planner(placed, "", {}, []), shards(placed), Finalize(placed, "run"), None, None)
        cpu_actors = ds._logical_plan.dag  # the operators, last first
        gpu_actors = cpu_actors.input_dependencies[0]
        codec_tasks = gpu_actors.input_dependencies[0]
    finally:
        ray.shutdown()
    assert gpu_actors.ray_remote_args["num_gpus"] == 1 and [cls for cls, _ in gpu_actors.fn_constructor_args[0]] == [Predict, Predict]
    assert not cpu_actors.ray_remote_args.get("num_gpus") and [cls for cls, _ in cpu_actors.fn_constructor_args[0]] == [Measure]
    assert codec_tasks.ray_remote_args["resources"] == {"codec_node": 1}


def test_plan_lets_datasets_take_turns_so_no_dataset_is_the_tail(tmp_path):
    import pyarrow as pa

    import mpq
    from mpq.engine.plan import Planner, count, iter_items, shards
    from mpq.results import ResultStore

    def job(**resources):
        return resolve(parse_job({
            "name": "turns",
            "datasets": [
                {"name": "many", "source": {"samples": "skimage"}, "limit": 4},
                {"name": "few", "source": {"samples": "skimage", "names": ["chelsea", "coffee"]}},
            ],
            "codecs": [{"name": "jpeg", "settings": [10]}],
            "tasks": [{"name": "classify", "model": "builtin:tiny-vit"}],
            "resources": resources,
        }))

    one = job(samples_per_block=1)
    store = ResultStore(str(tmp_path / "out"))
    items = list(iter_items(Planner(one, store.output, {}, store.files()), shards(one)))
    assert [i["dataset"] for i in items] == ["many", "few", "many", "few", "many", "many"]
    # Shards of cheap images hold up to 32 samples, small datasets are cut finer to spread over workers.
    assert [(s.dataset, s.start, s.stop) for s in shards(job())][:3] == [("many", 0, 1), ("few", 0, 1), ("many", 1, 2)]
    big = resolve(parse_job({"name": "big", "datasets": [{"name": "s", "source": {"synthetic": "images", "count": 10_000}}]}))
    assert {s.stop - s.start for s in shards(big)} == {32, 10_000 % 32} and len(shards(big)) == 313

    store.write(pa.table({"dataset": ["many"], "sample_id": [items[0]["sample_id"]], "codec": ["none"], "setting": [""],
                          "task": ["classify"], "error": pa.array([None], pa.string()), "mpq_version": [mpq.__version__]}))
    planner = Planner(one, store.output, {}, store.files())
    again = list(iter_items(planner, shards(one)))
    assert again[0]["units"] == [("jpeg", 10, ["classify"])]
    work = count(planner, shards(one))
    assert (work.samples, work.rows, work.done) == (6, 6 * 2 - 1, 1)


@pytest.mark.slow
def test_the_ray_engine_works_a_shard_of_cheap_images_as_one_block(tmp_path):
    """Ray Data splits a read task's output to reach its own idea of parallelism; the plan's
    blocks must reach the stages whole (32 cheap images a call), or each image is a task."""
    from mpq.engine.datasource import plan_dataset
    from mpq.engine.plan import Planner, shards
    from mpq.engine.ray_process import start_ray
    from mpq.results import ResultStore

    job = resolve(parse_job({"name": "blocks", "datasets": [{"name": "s", "source": {"synthetic": "images", "count": 3 * 32 * 64}}]}))
    store = ResultStore(str(tmp_path / "out"))
    plan = shards(job)
    start_ray()
    ds = plan_dataset(Planner(job, store.output, {}, store.files()), plan, readers=1)
    sizes = ds.map_batches(lambda b: {"n": [b.num_rows]}, batch_size=None, batch_format="pyarrow").take_all()
    assert sorted(r["n"] for r in sizes) == [32] * len(plan) == [32] * 3 * 64


def test_a_samples_rows_travel_between_ray_stages_as_one_record_with_one_original():
    """Between stages a sample's variants go together: its media as Arrow data, each object once
    (the original crosses the object store once, not once per codec setting, and arrives as one
    object its rows share; a baseline row's decoded media is its original), its rows pickled
    beside them without the media."""
    from mpq.engine.transport import pack, unpack
    from mpq.media import ARROW, Image, audio_from_array

    originals = {s: Image(np.full((64, 64, 3), i, np.uint8), "L → RGB", 6) for i, s in enumerate("ab")}
    rows = [{"dataset": "d", "sample_id": s, "codec": "jpeg", "setting": q, "original": x,
             "decoded": x if q is None else Image(x.pixels // (q + 1))}
            for s, x in originals.items() for q in (None, 5, 30)]
    clip = audio_from_array(np.random.default_rng(0).uniform(-1, 1, (4000, 2)), 16000)
    stems = {"vocals": audio_from_array(np.zeros(4000, np.float32), 16000)}
    rows.append({"dataset": "m", "sample_id": "t", "codec": "none", "setting": None, "original": clip, "decoded": clip, "target": stems})
    packed = pack(rows)
    assert packed.num_rows == 3  # a record per sample
    assert packed.column("media").type.value_type == ARROW
    assert packed.column("rows").nbytes < 4000  # the rows without their media
    media = sum(x.pixels.nbytes for x in originals.values()) * 3 + clip.samples.nbytes + 4000 * 4
    assert packed.nbytes < 1.1 * media  # each original once
    back = unpack(packed)
    assert [(r["sample_id"], r["setting"]) for r in back] == [(r["sample_id"], r["setting"]) for r in rows]
    assert len({id(r["original"]) for r in back}) == 3 and all(r["decoded"] is r["original"] for r in back if r["setting"] is None)
    for r, was in zip(back, rows):  # bit-exact, fields and all
        assert r["original"].to_arrow() == was["original"].to_arrow() and r["decoded"].to_arrow() == was["decoded"].to_arrow()
    assert back[0]["original"].orientation == 6
    assert back[-1]["original"].sample_rate == 16000 and np.array_equal(back[-1]["target"]["vocals"].samples, stems["vocals"].samples)


@pytest.mark.slow
def test_a_plan_longer_than_a_window_runs_as_consecutive_executions_and_loses_nothing(tmp_path, monkeypatch):
    """Ray Data keeps every block's stats in the driver until its dataset is gone, so a long
    plan runs as consecutive executions (``WINDOW`` shards each): rows as the serial engine's.
    On the cluster this process holds, else one of its own (`run_job`, as a run starts it): the
    placement test above left a cluster, and joining the session's again would hang (conftest's
    `ray_local`)."""
    import mpq.engine.ray as engine
    from mpq.reading import read_results
    from mpq.runner import run_job

    built = []
    dataset = engine._dataset
    monkeypatch.setattr(engine, "_dataset", lambda job, planner, plan, *a: built.append(len(plan)) or dataset(job, planner, plan, *a))
    monkeypatch.setattr(engine, "WINDOW", 4)
    job = parse_job({"name": "windows", "resources": {"samples_per_block": 3},
                     "datasets": [{"name": "s", "source": {"synthetic": "images", "count": 30, "size": 8}}],
                     "codecs": [{"name": "jpeg", "settings": [50]}]})
    run_job(job, str(tmp_path / "ray"), engine="ray", progress=False)
    run_job(job, str(tmp_path / "serial"), engine="serial", progress=False)
    assert built == [4, 4, 2]  # 10 shards of 3 samples
    key = ["dataset", "sample_id", "codec", "setting"]
    ray_rows, serial_rows = (read_results(str(tmp_path / e)).sort(key).select(key + ["height", "error"]) for e in ("ray", "serial"))
    assert ray_rows.height == 60 and ray_rows.equals(serial_rows)  # the original and JPEG 50 of each
    assert ray_rows["error"].is_null().all() and ray_rows["sample_id"].n_unique() == 30
