import re
import subprocess
import sys

import pytest
from helpers import ROOT


def mpq(*args, **kw):
    return subprocess.run([sys.executable, "-m", "mpq.cli", *args], cwd=ROOT, capture_output=True, text=True, **kw)


def test_list_shows_every_registered_component():
    from mpq import registry

    out = mpq("list")
    assert out.returncode == 0
    listed = {line.split()[0] for line in out.stdout.splitlines() if line.startswith("  ")}
    for kind in registry.KINDS:
        assert set(registry.names(kind)) <= listed, kind


def test_every_codec_is_in_the_readme_and_documented():
    """The README's "Supported" table and docs/components.md name every registered codec."""
    from mpq import registry

    readme = (ROOT / "README.md").read_text()
    supported = readme[readme.index("## Supported") : readme.index("## Why each dependency")]
    components = (ROOT / "docs" / "components.md").read_text()
    for name in registry.names("codec"):
        assert re.search(rf"^\| codec \|[^|\n]*`{re.escape(name)}`", supported, re.M), f"README's Supported table lacks {name}"
        assert re.search(rf"^\| codec \|[^|\n]*`{re.escape(name)}`", components, re.M), f"docs/components.md lacks {name}"


def test_list_describes_every_component_in_one_line():
    out = mpq("list")
    assert re.search(r"^  jpeg +image +JPEG through Pillow", out.stdout, re.M)
    assert re.search(r"^  folder +image +A local folder of images", out.stdout, re.M)


def test_list_name_shows_options_ranges_defaults_and_the_default_sweep():
    from mpq import registry

    out = mpq("list", "jpeg")
    assert out.returncode == 0
    assert f"default sweep {registry.get('codec', 'jpeg').default_settings}" in out.stdout
    assert "quality must be an integer in [1, 95]" in out.stdout and "target_bpp" in out.stdout
    music = mpq("list", "music").stdout
    assert "tracks: int in [1, 100], default 2" in music and "seconds: float in (0, 600], default 3.0" in music
    assert "music: one of synthetic, required" in music
    classify = mpq("list", "classify").stdout
    assert "model: str, default 'google/vit-base-patch16-224'" in classify and "batch_size: int > 0, default 16" in classify
    assert "label_map: str | None, default None – a column of annotation images" in mpq("list", "hf").stdout  # a field's description


def test_list_of_an_unknown_name_names_the_valid_ones():
    out = mpq("list", "jpg")
    assert out.returncode == 2 and "no component 'jpg'; valid choices:" in out.stderr and "jpeg" in out.stderr
    assert "Traceback" not in out.stderr


def test_bad_job_file_fails_before_work_with_one_message(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\ndatasets: [{name: d, source: {samples: skimage}}]\ncodecs: [{name: jpg}]\n")
    out = mpq("run", str(bad), "--output", str(tmp_path / "o"))
    assert out.returncode == 2
    assert "codecs[0].name: unknown codec 'jpg'; valid choices:" in out.stderr
    assert not (tmp_path / "o").exists()


@pytest.mark.slow  # the check before work imports compressai and torchvision for their checkpoint URLs
def test_offline_hub_model_fails_naming_the_model(tmp_path):
    out = mpq("run", str(ROOT / "jobs" / "beans.yaml"), "--output", str(tmp_path / "o"), env={"HF_HUB_OFFLINE": "1", "PATH": ""})
    assert out.returncode == 2
    assert "nateraw/vit-base-beans" in out.stderr and "mpq-ray fetch" in out.stderr
    assert "HF_HUB_OFFLINE is set" in out.stderr and "hub is not reachable" not in out.stderr


