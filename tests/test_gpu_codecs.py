"""Neural codecs on GPUs: the split network codes what the CPU codes, batches code what single
images code, and the Ray plan puts neural codecs in a GPU actor pool and classic ones in CPU tasks
(on a local cluster that declares a GPU it does not have: the device stays the CPU)."""

import numpy as np
import pytest
from helpers import photo
from PIL import Image

from mpq import registry
from mpq.cache import EncodedCache
from mpq.components import Coded
from mpq.engine.stages import Encode, Load
from mpq.job import resolve
from mpq.media import Image as RGB
from mpq.spec import parse_job


def mbt2018():
    cls = registry.get("codec", "mbt2018")
    return cls(cls.Options(pretrained=False))


@pytest.fixture
def folder(tmp_path):
    """Two photos of one shape and one of another."""
    root = tmp_path / "imgs"
    root.mkdir()
    for name, (h, w, seed) in {"a": (48, 64, 0), "b": (48, 64, 1), "c": (40, 72, 2)}.items():
        Image.fromarray(photo(h, w, seed)).save(root / f"{name}.png")
    return root


def image_job(folder, **extra):
    return parse_job({
        "name": "gpu", "datasets": [{"name": "imgs", "source": {"folder": str(folder)}}],
        "codecs": [{"name": "jpeg", "settings": [50]}, {"name": "mbt2018", "settings": [1], "pretrained": False}], **extra,
    })


@pytest.mark.slow
def test_compressai_batch_and_split_network_code_as_the_cpu_does_one_by_one():
    """Batched: the same bitstreams, and pixels but for float noise. Split (transforms on another
    device, here a second name for the CPU; entropy coding on the CPU): the very same output."""
    images = [RGB(photo(48, 64, 0)), RGB(photo(40, 72, 2)), RGB(photo(48, 64, 1))]  # two padded shapes, interleaved
    codec = mbt2018()
    one = [codec.roundtrip(img, 1) for img in images]
    batch = codec.roundtrip_batch(images, 1)
    assert [c.bits for c in batch] == [c.bits for c in one]
    for b, o, img in zip(batch, one, images):
        assert b.decoded.pixels.shape == img.pixels.shape and np.abs(b.decoded.pixels.astype(int) - o.decoded.pixels).max() <= 1
    assert {c.device for c in one} == {"cpu"}

    codec.device = "cpu:0"  # load_on_device splits the network for any device but "cpu"
    split = codec.roundtrip(images[1], 1)
    assert split.bits == one[1].bits and np.array_equal(split.decoded.pixels, one[1].decoded.pixels) and split.device == "cpu:0"
    from mpq.codecs.device import OnDevice
    from mpq.codecs.learned import load_on_device, load_zoo_model

    net = load_on_device("mbt2018", 1, "mse", False, "cpu:0")
    assert isinstance(net.g_a, OnDevice) and isinstance(net.g_s, OnDevice) and not isinstance(net.h_a, OnDevice)
    assert not isinstance(load_zoo_model("mbt2018", 1, "mse", False).g_a, OnDevice)  # the CPU model is untouched


@pytest.mark.slow
def test_hific_split_network_codes_as_the_cpu_does(tmp_path):
    from test_hific import write_checkpoint

    write_checkpoint(tmp_path, "hific_low.pt")
    cls = registry.get("codec", "hific")
    img = RGB(photo(70, 100))
    cpu = cls(cls.Options(checkpoints=str(tmp_path)))
    split = cls(cls.Options(checkpoints=str(tmp_path)))
    split.device = "cpu:0"
    a, b = cpu.roundtrip(img, "low"), split.roundtrip(img, "low")
    assert a.bits == b.bits and np.array_equal(a.decoded.pixels, b.decoded.pixels) and (a.device, b.device) == ("cpu", "cpu:0")


@pytest.mark.slow
def test_encode_codes_only_its_codecs_in_batches_and_caches_the_device(folder, tmp_path):
    """The GPU pool's Encode: only the neural codec's rows, in batches, through the cache; the
    rows record the device; a second pass takes them from the cache."""
    job = resolve(image_job(folder))
    items = [{"dataset": "imgs", "sample_id": s, "units": [("none", None, []), ("jpeg", 50, []), ("mbt2018", 1, [])]}
             for s in ("a.png", "b.png", "c.png")]
    cache = EncodedCache(str(tmp_path / "out"))
    encode = Encode(job, cache, {"mbt2018"}, None, batch=8)
    calls = []
    codec = encode.codecs["mbt2018"]
    batch = codec.roundtrip_batch
    codec.roundtrip_batch = lambda media, setting: calls.append(len(media)) or batch(media, setting)  # count, then code
    rows = encode(Load(job)(items))
    assert calls == [3]  # the three images of the setting in one call (two shapes inside)
    coded = [r for r in rows if r["codec"] == "mbt2018"]
    assert all(r["error"] is None and r["codec_device"] == "cpu" and r["bpp"] > 0 for r in coded)
    assert all("decoded" not in r and "codec_device" not in r for r in rows if r["codec"] != "mbt2018")  # for the CPU tasks
    one = Encode(job)(Load(job)(items))  # row by row, the serial engine's way
    assert [r["bits"] for r in coded] == [r["bits"] for r in one if r["codec"] == "mbt2018"]
    assert [r["codec_device"] for r in one] == [None, "cpu", "cpu"] * 3

    calls.clear()
    again = encode(Load(job)(items))
    assert calls == [] and [r["bits"] for r in again if r["codec"] == "mbt2018"] == [r["bits"] for r in coded]


def test_cache_keeps_the_device(tmp_path):
    cache = EncodedCache(str(tmp_path))
    path = f"{cache.root}/x.arrow"
    cache.put(path, Coded(bits=8, decoded=RGB(photo(4, 4)), device="cuda"))
    assert cache.get(path).device == "cuda" and np.array_equal(cache.get(path).decoded.pixels, photo(4, 4))


def stage_names(group) -> list[str]:
    return [cls.__name__ for cls, _ in group.specs]


def test_groups_put_neural_codecs_in_a_gpu_pool_only_where_there_are_gpus(folder):
    from mpq.engine.placement import groups

    def placed(spec, has_gpu):
        return groups(resolve(spec), has_gpu)

    tasks = [{"name": "classify", "model": "builtin:tiny-vit", "batch_size": 4}]
    job = image_job(folder, tasks=tasks, metrics=["psnr"])
    # No GPU: every codec codes in the CPU tasks; actors hold the model and the metric.
    assert [stage_names(g) for g in placed(job, False)] == [["Predict", "Measure"]]
    # GPUs: the neural codec joins the model actors (same GPUs per actor), on the device torch sees.
    gpu = placed(job, True)
    assert [(stage_names(g), g.gpus, g.batch_size) for g in gpu] == [(["Encode", "Predict"], 1, 8), (["Measure"], 0, 16)]
    encode_args = gpu[0].specs[0][1]
    assert encode_args[2] == {"mbt2018"} and encode_args[3] is None and encode_args[4] == 8
    assert gpu[0].specs[1][1][2] is None  # Predict: the device torch sees, not "cuda" because Ray counts a GPU
    # Its own pool with other GPUs per actor; its pool size; none with codec_gpus 0 or no neural codec.
    own = placed(image_job(folder, tasks=tasks, resources={"codec_gpus": 0.5, "codec_actors": 2}), True)
    assert [(stage_names(g), g.gpus, g.pool) for g in own] == [(["Encode"], 0.5, 2), (["Predict"], 1, None)]
    assert [stage_names(g) for g in placed(image_job(folder, tasks=tasks, resources={"codec_gpus": 0}), True)] == [["Predict"]]
    jpeg_only = image_job(folder)
    jpeg_only.codecs.pop()
    assert placed(jpeg_only, True) == []


@pytest.fixture
def ray_with_a_declared_gpu():
    """A local cluster that declares one GPU this machine does not have (torch sees none): a
    cluster of its own, since one that declares a GPU would put every other Ray test's models
    on GPU actors. It leaves the session's cluster for it (`ray_local` joins it again)."""
    import ray
    import torch

    import mpq.engine  # noqa: F401  first: it configures Ray before Ray reads its settings

    assert not torch.cuda.is_available()
    ray.shutdown()
    ray.init(num_cpus=2, num_gpus=1, logging_level="ERROR", log_to_driver=False, include_dashboard=False)
    yield
    ray.shutdown()


def operators(ds) -> list:
    """The dataset's logical operators, source first."""
    ops, op = [], ds._logical_plan.dag
    while op is not None:
        ops.append(op)
        op = op.input_dependencies[0] if op.input_dependencies else None
    return ops[::-1]


@pytest.mark.slow
def test_ray_codes_neural_codecs_in_a_gpu_actor_pool_and_classic_ones_in_cpu_tasks(folder, tmp_path, ray_with_a_declared_gpu):
    from ray.data import ActorPoolStrategy, TaskPoolStrategy

    from mpq.engine.plan import Planner, shards
    from mpq.engine.ray import _Actor, _dataset
    from mpq.engine.stages import Finalize
    from mpq.reading import read_results
    from mpq.runner import run_job

    spec = image_job(folder, tasks=[{"name": "classify", "model": "builtin:tiny-vit", "batch_size": 4}], metrics=["psnr"])
    job, out = resolve(spec), str(tmp_path / "out")
    ds = _dataset(job, Planner(job, out, {}, []), shards(job), Finalize(job, "run"), None, out)
    _, tasks, gpu, cpu = operators(ds)
    assert isinstance(tasks.compute, TaskPoolStrategy) and not tasks.ray_remote_args.get("num_gpus")
    load, encode = tasks.fn_kwargs["stages"]
    assert isinstance(load, Load) and encode.only == {"none", "jpeg"} and encode.device == "cpu"
    assert gpu.fn is _Actor and isinstance(gpu.compute, ActorPoolStrategy) and gpu.ray_remote_args["num_gpus"] == 1
    (cls, args), (predict, _) = gpu.fn_constructor_args[0]
    assert cls is Encode and args[2] == {"mbt2018"} and predict.__name__ == "Predict"
    assert cpu.fn is _Actor and not cpu.ray_remote_args.get("num_gpus")

    run_job(spec, out, engine="ray", progress=False)
    df = read_results(out)
    assert df.height == 9 and df["error"].null_count() == 9
    coded = df.filter(df["codec"] != "none")
    assert set(coded["codec_device"]) == {"cpu"} and set(df["device"]) == {"cpu"}  # torch sees no GPU: the CPU it is
    assert (coded["bpp"] > 0).all() and df.filter(df["codec"] == "none")["codec_device"].is_null().all()
