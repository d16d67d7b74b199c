"""The documented examples as they stand: the README's job file is valid, and the extension
example of docs/extending.md is code that runs: registered, held to the codec contract and
run through a job."""

import math
import re

import polars as pl
import pytest
import yaml
from helpers import ROOT
from test_contract import IMAGE_SHAPES, check_codec

from mpq import registry


def blocks(language: str, page: str = "README.md") -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", (ROOT / page).read_text(), re.S)


def readme_example() -> str:
    """The component example of docs/extending.md."""
    examples = [b for b in blocks("python", "docs/extending.md") if "@register(" in b]
    assert len(examples) == 1, "docs/extending.md should show one component example"
    return examples[0]


@pytest.fixture
def example_codec(monkeypatch):
    """The README's codec, registered in a copy of the registry (other tests see the built-ins only)."""
    registry.load_all()
    monkeypatch.setattr(registry, "_registry", {kind: dict(comps) for kind, comps in registry._registry.items()})
    before = set(registry.names("codec"))
    exec(compile(readme_example(), "README.md", "exec"), {"__name__": "readme_example"})
    (name,) = set(registry.names("codec")) - before
    return name


def test_the_readme_codec_keeps_the_codec_contract(example_codec):
    cls = registry.get("codec", example_codec)
    codec = cls()
    for setting in cls.default_settings:
        codec.check_setting(setting)
        for shape in IMAGE_SHAPES:
            check_codec(codec, setting, shape)
    with pytest.raises(ValueError, match="integer in"):
        codec.check_setting(9)


def test_the_readme_codec_runs_in_a_job(example_codec, tmp_path):
    from mpq.runner import run_job
    from mpq.spec import parse_job

    job = parse_job({
        "name": "readme",
        "datasets": [{"name": "photos", "source": {"samples": "skimage", "names": ["camera", "astronaut"]}}],
        "codecs": [{"name": example_codec, "settings": [2, 6]}],
        "metrics": ["psnr"],
    })
    run_job(job, str(tmp_path), engine="serial", progress=False)
    rows = pl.read_parquet(tmp_path / "results" / "*.parquet").filter(pl.col("codec") == example_codec)
    assert rows.height == 4 and rows["error"].null_count() == 4
    assert (rows["bits"] == 8 * rows["png_bytes"]).all() and (rows["bits"] > 0).all()
    psnr = dict(zip(zip(rows["sample_id"], rows["setting"]), rows["psnr"]))
    for sample in ("camera", "astronaut"):  # more bits kept, closer to the original
        assert math.isfinite(psnr[sample, "2"]) and psnr[sample, "2"] < psnr[sample, "6"]


def test_the_readme_job_is_valid():
    from mpq.spec import parse_job

    (job,) = blocks("yaml")
    spec = parse_job(yaml.safe_load(job))
    assert [c.name for c in spec.codecs] == ["jpeg", "webp"] and spec.datasets[0].source_type == "hf"


@pytest.mark.parametrize("doc", ["README.md", "docs/components.md"])
def test_every_registered_component_is_in_the_supported_tables(doc):
    """Each registered name appears in backticks in a `| kind | ... |` row of the document's
    tables (README's "Supported", docs/components.md's list)."""
    named: dict[str, set[str]] = {}
    for line in (ROOT / doc).read_text().splitlines():
        cells = [c.strip() for c in line.split("|")[1:-1]]
        if len(cells) >= 2 and cells[0] in registry.KINDS:
            named.setdefault(cells[0], set()).update(re.findall(r"`([^`]+)`", cells[1]))
    missing = [f"{kind} {name}" for kind in registry.KINDS for name in registry.names(kind) if name not in named.get(kind, set())]
    assert not missing, f"{doc} does not list: {', '.join(missing)}"
