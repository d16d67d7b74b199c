"""Every registered component against the contract of its kind, in the manner of
torchmetrics' ``MetricTester``: the cases are drawn from the registry, so a component
registered tomorrow is tested too (with its default options, unless an offline way to
build it is named below).

- a codec round-trips every media shape of its modality with real bits, and gives back
  media of the input's shape (and its own columns, of their declared types);
- a metric is ideal on identical input (0 for a lower-is-better column, else inf, 1 or
  the metric's own best) and finite, and worse, on a coded one; its text columns (how it
  ran) are filled;
- a task returns its declared columns, of their declared types, and its ``aggregate`` takes them;
- a source's ids load, as media of its modality.

Everything is built offline and small: tiny random-weight models written with
``save_pretrained`` or the package's own format, local data in the layouts the sources read.
"""

import math

import numpy as np
import PIL.Image
import polars as pl
import pyarrow as pa
import pytest
from helpers import photo
from test_audio import tone, wav_bytes
from test_detect import hf_boxes
from test_hific import write_checkpoint
from test_segment import png

from mpq import registry
from mpq.components import ClassTarget, Sample
from mpq.media import MEDIA, STEMS, Audio, Image, audio_from_array, image_from_array

# --- media every component of a modality must take -------------------------------------------

IMAGE_SHAPES = {"gray": (66, 90), "rgb": (66, 90, 3), "rgba": (66, 90, 4)}  # HiFiC needs 65 px a side
AUDIO_SHAPES = {"mono-16k": (16000, 1), "stereo-44k": (44100, 2)}  # (sample rate, channels)
SECONDS = 0.25


def image(shape) -> Image:
    """The image a codec receives for one of this shape: as the sources load it (8-bit RGB)."""
    rgb = photo(*shape[:2])
    arr = rgb[..., 0] if len(shape) == 2 else rgb if shape[2] == 3 else np.dstack([rgb, np.full(shape[:2], 200, np.uint8)])
    return image_from_array(arr)


def audio(rate, channels, seconds=SECONDS, seed=0) -> Audio:
    return audio_from_array(tone(seconds, rate, channels, seed), rate)


def media(modality: str, shape: str):
    return image(IMAGE_SHAPES[shape]) if modality == "image" else audio(*AUDIO_SHAPES[shape])


def same_form(a, b) -> bool:
    if isinstance(a, Audio):
        return isinstance(b, Audio) and (a.sample_rate, a.samples.shape, a.samples.dtype) == (b.sample_rate, b.samples.shape, b.samples.dtype)
    return isinstance(b, Image) and a.pixels.shape == b.pixels.shape


def check_types(columns: dict[str, pa.DataType], rows: list[dict]) -> None:
    """Each declared column's values convert to its declared Arrow type."""
    for name, dtype in columns.items():
        if any(name in r for r in rows):
            pa.array([r.get(name) for r in rows], type=dtype)


# --- how each component is built offline (default options when not named) --------------------

SLOW = {"mbt2018", "cheng2020-anchor", "hific", "encodec_24khz", "encodec_48khz", "dac", "lpips_vgg", "cdpam", "dists", "visqol", "asr", "segment", "detect", "separate"}


def codec_options(name, tmp_path) -> dict:
    if name == "hific":
        write_checkpoint(tmp_path, "hific_low.pt")
        return {"checkpoints": str(tmp_path)}
    return {
        "mbt2018": {"pretrained": False}, "cheng2020-anchor": {"pretrained": False},
        "encodec_24khz": {"model": "builtin:tiny-encodec-24khz"}, "encodec_48khz": {"model": "builtin:tiny-encodec-48khz"},
        "dac": {"model": "builtin:tiny-dac-44khz"},
    }.get(name, {})


METRIC_OPTIONS = {"cdpam": {"seconds": SECONDS}}


def task_case(name, request) -> tuple[dict, list, list]:
    """Options, two inputs (the original and a coded version) and their targets."""
    if name == "segment":
        label = np.zeros((40, 56), np.uint8)
        label[:20], label[20:, :28] = 1, 2
        return {"model": request.getfixturevalue("tiny_segformer")}, images(), [label, label]
    if name == "detect":
        boxes = {"boxes": [[2.0, 3.0, 30.0, 20.0], [10.0, 15.0, 50.0, 38.0]], "labels": ["cat", "dog"]}
        return {"model": "builtin:tiny-detr", "agreement_threshold": 0.0}, images(), [boxes, boxes]
    options = {"classify": {"model": "builtin:tiny-vit"}, "asr": {"model": "builtin:tiny-whisper"},
               "separate": {"model": "builtin:tiny-htdemucs", "shifts": 0}}.get(name, {})
    if registry.get("task", name).modality == "image":
        return options, images(), ["astronaut"] * 2 if name == "ocr" else [ClassTarget("astronaut")] * 2
    clip = audio(44100, 2)
    target = {s: clip for s in STEMS} if name == "separate" else "the birch canoe" if name == "asr" else None
    return options, [clip, registry.get("codec", "opus")().roundtrip(clip, 12).decoded], [target] * 2


def images() -> list[Image]:
    img = image((40, 56, 3))
    return [img, registry.get("codec", "jpeg")().roundtrip(img, 10).decoded]


def source_options(name, tmp_path) -> list[dict]:
    """One set of options per kind of data the source reads."""
    if name == "samples":
        return [{"samples": "skimage", "names": ["camera", "logo"]}]  # grayscale and RGBA
    if name == "synthetic":
        return [{"synthetic": "images", "count": 3, "size": 8}]
    if name == "text":
        return [{"text": "rendered", "count": 3}]
    if name == "speech":
        return [{"speech": "espeak", "count": 1, "sample_rate": 16000}]
    if name == "music":
        return [{"music": "synthetic", "tracks": 1, "seconds": SECONDS}]
    if name == "folder":
        for label, shape in (("cats", (40, 56, 3)), ("dogs", (40, 56))):
            (tmp_path / "img" / label).mkdir(parents=True)
            PIL.Image.fromarray(photo(*shape[:2])[..., 0] if len(shape) == 2 else photo(*shape)).save(tmp_path / "img" / label / "a.png")
        (tmp_path / "snd").mkdir()
        (tmp_path / "snd" / "a.wav").write_bytes(wav_bytes(tone(SECONDS, 16000), 16000))
        (tmp_path / "snd" / "a.txt").write_text("a chirp")
        return [{"folder": str(tmp_path / "img"), "labels": "parent"},
                {"folder": str(tmp_path / "snd"), "media": "audio", "labels": "text"}]
    if name == "hf":
        return [{"hf": hf_images(tmp_path / "hf-img"), "label": "label"},
                {"hf": hf_audio(tmp_path / "hf-snd"), "audio": "audio", "label": "sentence"},
                {"hf": hf_boxes(tmp_path / "hf-box"), "boxes": "objects"}]
    if name == "musdb":
        track = tmp_path / "musdb" / "test" / "a track"
        track.mkdir(parents=True)
        for stem in ("mixture", *STEMS):
            (track / f"{stem}.wav").write_bytes(wav_bytes(tone(SECONDS, 44100, 2), 44100))
        return [{"musdb": str(tmp_path / "musdb")}]
    if name == "commonvoice":
        (tmp_path / "cv" / "clips").mkdir(parents=True)
        (tmp_path / "cv" / "clips" / "a.mp3").write_bytes(wav_bytes(tone(SECONDS, 48000), 48000))  # libsndfile sniffs it
        (tmp_path / "cv" / "dev.tsv").write_text("client_id\tpath\tsentence\nx\ta.mp3\tA clip.\n")
        return [{"commonvoice": str(tmp_path / "cv")}]
    return [{}]


def hf_images(root) -> str:
    """A split in the hub's Parquet layout: image column and class labels."""
    import datasets

    feats = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=["a", "b"])})
    ds = datasets.Dataset.from_dict({"image": [png(photo(40, 56, seed=i)) for i in range(2)], "label": [0, 1]}, features=feats)
    (root / "data").mkdir(parents=True)
    ds.to_parquet(root / "data" / "validation-00000-of-00001.parquet")
    return str(root)


def hf_audio(root) -> str:
    """The same with an Audio column (bytes + path), written as the hub writes it (datasets
    itself would need torchcodec to encode audio)."""
    import json

    import pyarrow.parquet as pq

    clips = [{"bytes": wav_bytes(tone(SECONDS, 16000, seed=i), 16000), "path": f"{i}.wav"} for i in range(2)]
    features = {"audio": {"_type": "Audio"}, "sentence": {"dtype": "string", "_type": "Value"}}
    table = pa.table({"audio": clips, "sentence": ["one", "two"]})
    root.mkdir(parents=True)
    pq.write_table(table.replace_schema_metadata({"huggingface": json.dumps({"info": {"features": features}})}),
                   root / "validation.parquet")
    return str(root)


def build(kind, name, options, *args):
    cls = registry.get(kind, name)
    return cls(cls.Options(**options), *args)


def cases(kind):
    """pytest parameters: every registered component of ``kind``."""
    return [pytest.param(name, marks=[pytest.mark.slow] if name in SLOW else []) for name in registry.names(kind)]


def codec_cases():
    """Every registered codec × each media shape of its modality."""
    shapes = {"image": IMAGE_SHAPES, "audio": AUDIO_SHAPES}
    return [
        pytest.param(name, shape, marks=[pytest.mark.slow] if name in SLOW else [], id=f"{name}-{shape}")
        for name, cls in registry.items("codec") for shape in shapes[cls.modality]
    ]


# --- the contracts ------------------------------------------------------------------------------


def check_codec(codec, setting, shape: str) -> None:
    """One round trip of media of this shape: real bits, media of the input's form, its own columns."""
    x = media(codec.modality, shape)
    coded = codec.roundtrip(x, setting)
    assert isinstance(coded.bits, int) and coded.bits > 0, f"{codec.name}: bits {coded.bits!r}"
    assert same_form(x, coded.decoded), f"{codec.name}: {shape} input came back as {coded.decoded!r:.200}"
    assert set(coded.extra) <= set(codec.columns), f"{codec.name}: extra {set(coded.extra) - set(codec.columns)} not in its columns"
    check_types(codec.columns, [coded.extra])
    assert codec.version()


@pytest.fixture(scope="module")
def codecs(tmp_path_factory):
    """Each codec built once for all its media shapes (HiFiC's checkpoint is written once)."""
    built = {}

    def get(name):
        if name not in built:
            built[name] = build("codec", name, codec_options(name, tmp_path_factory.mktemp(name)))
        return built[name]

    return get


@pytest.mark.parametrize("name,shape", codec_cases())
def test_codec_round_trips_every_media_shape_with_real_bits(name, shape, codecs):
    codec = codecs(name)
    setting = codec.default_settings[0]
    codec.check_setting(setting)
    check_codec(codec, setting, shape)


# Columns whose best score is neither 0, 1 nor inf: PESQ's P.862.2 ceiling (raw 4.5 mapped,
# 0.999 + 4 / (1 + exp(-1.3669 · 4.5 + 3.8224))), SSIMULACRA 2's 100; None: no fixed best
# (ViSQOL's lattice mapping gives about 4.5 for identical speech, depending on the clip).
BEST = {"pesq": 0.999 + 4 / (1 + math.exp(-1.3669 * 4.5 + 3.8224)), "ssimulacra2": 100.0, "visqol": None}


def ideal(value, lower_better: bool, column: str) -> bool:
    if value is None:
        return False
    if column in BEST:
        return BEST[column] is None or abs(value - BEST[column]) <= 1e-5
    if lower_better:
        return abs(value) <= 1e-6
    return value == math.inf or abs(value - 1) <= 1e-6


@pytest.mark.parametrize("name", cases("metric"))
def test_metric_is_ideal_on_identical_input_and_finite_on_a_coded_one(name):
    metric = build("metric", name, METRIC_OPTIONS.get(name, {}))
    if metric.modality == "image":
        ref = image((176, 176, 3))  # MS-SSIM needs 161 pixels a side
        coded = registry.get("codec", "jpeg")().roundtrip(ref, 10).decoded
        same = Image(ref.pixels.copy())
    else:
        ref = audio(16000, 2, seconds=1.0)  # ViSQOL needs 0.75 s
        coded = registry.get("codec", "opus")().roundtrip(ref, 12).decoded
        same = Audio(ref.samples.copy(), ref.sample_rate)
    identical, lossy = metric.compute([ref, ref], [same, coded])
    assert set(identical) == set(lossy) == set(metric.columns)
    check_types(metric.columns, [identical, lossy])
    for column, dtype in metric.columns.items():
        if pa.types.is_string(dtype):  # how the metric ran (rate, channels), not a score
            assert identical[column] and lossy[column], f"{name}: {column} is empty"
            continue
        lower = metric.lower_better and column == name  # Metric.lower_better is about the column named like it
        assert ideal(identical[column], lower, column), f"{name}: {column} = {identical[column]} on identical input"
        assert lossy[column] is not None and math.isfinite(lossy[column]), f"{name}: {column} = {lossy[column]} on a coded input"
        assert (lossy[column] > identical[column]) if lower else (lossy[column] < identical[column]), f"{name}: {column} does not see the coding"


@pytest.mark.parametrize("name", cases("task"))
def test_task_returns_its_declared_columns(name, request):
    options, inputs, targets = task_case(name, request)
    task = build("task", name, options)
    task.load()
    assert task.model_id, f"{name}: load() records no model id"
    rows = task.predict(inputs, targets)
    assert len(rows) == len(inputs)
    # One scale for every task: agreement in [0, 1], 1 for the same answer; the raw distance
    # in a column the task declares.
    same, coded = task.agreement(rows[0], rows[0]), task.agreement(rows[1], rows[0])
    assert same["agreement"] == 1.0, f"{name}: agreement {same} with its own answer"
    assert coded["agreement"] is not None and 0 <= coded["agreement"] <= 1, f"{name}: agreement {coded}"
    assert set(same) == set(coded) and set(coded) - {"agreement"} <= set(task.columns), f"{name}: undeclared {coded}"
    for row in rows:
        assert set(task.columns) <= set(row) | set(coded), f"{name}: predict() lacks {set(task.columns) - set(row) - set(coded)}"
    check_types(task.columns, [r | coded for r in rows])
    stored = [{k: v for k, v in r.items() if not k.startswith("_")} | coded for r in rows]
    scores = type(task).aggregate(pl.DataFrame(stored))
    assert scores and all(v is None or isinstance(v, float) for v in scores.values()), f"{name}: aggregate gave {scores}"


@pytest.mark.parametrize("name", cases("source"))
def test_source_ids_load(name, tmp_path):
    for options in source_options(name, tmp_path):
        source = build("source", name, options)
        ids = source.ids()
        assert ids and source.count() == len(ids) and source.id_range(0, 1) == ids[:1]
        assert isinstance(source.describe(), str)
        classes = source.classes()
        for sample_id in ids:
            sample = source.load(sample_id)
            assert isinstance(sample, Sample) and sample.sample_id == sample_id
            assert isinstance(sample.media, MEDIA[source.modality]), f"{name}: {type(sample.media).__name__} for {source.modality}"
            if source.modality == "audio":
                assert sample.media.samples.dtype == np.float32
            if classes is not None:
                assert str(sample.target) in {str(c) for c in classes}, f"{name}: target {sample.target} not among its classes"


@pytest.mark.parametrize("kind,name", [(kind, name) for kind in registry.KINDS for name in registry.names(kind)])
def test_every_component_describes_itself_in_one_line(kind, name):
    """`mpq-ray list` prints it: a `description`, or the first line of the class's own docstring."""
    assert registry.description(registry.get(kind, name)), f"{kind} {name}: no description and no docstring"
