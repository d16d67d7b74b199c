"""A plugin: a package outside mpq that registers a codec through the `mpq.codecs` entry
point group, written here as an installed package is laid out (the package and its
``.dist-info``). It is found by the registry, and `mpq-ray submit` ships it to the cluster."""

import os
import shutil
import subprocess
import sys
import tomllib

import pytest
import yaml
from test_readme import blocks, readme_example

from mpq import cluster, registry
from mpq.spec import parse_job

JOB = {
    "name": "plugin",
    "datasets": [{"name": "photos", "source": {"samples": "skimage", "names": ["camera"]}}],
    "codecs": [{"name": "posterize", "settings": [2]}],
    "metrics": ["psnr"],
}


def write_plugin(site):
    """docs/extending.md's example codec and pyproject.toml, installed in ``site`` as an
    installer lays a package out: `mpq_posterize/` and its `.dist-info`."""
    (pyproject,) = [tomllib.loads(b) for b in blocks("toml", "docs/extending.md") if "[project]" in b]
    project = pyproject["project"]
    (site / "mpq_posterize").mkdir(parents=True)
    (site / "mpq_posterize" / "__init__.py").write_text(readme_example())
    info = site / f"mpq_posterize-{project['version']}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {project['name']}\nVersion: {project['version']}\n")
    (info / "entry_points.txt").write_text("".join(
        f"[{group}]\n" + "".join(f"{name} = {target}\n" for name, target in eps.items())
        for group, eps in project["entry-points"].items()
    ))
    return site


@pytest.fixture
def plugin(tmp_path, monkeypatch):
    """The plugin installed on this process's path, and a registry that loads entry points afresh."""
    site = write_plugin(tmp_path / "site")
    monkeypatch.syspath_prepend(str(site))
    registry.load_all()
    monkeypatch.setattr(registry, "_registry", {kind: dict(comps) for kind, comps in registry._registry.items()})
    monkeypatch.setattr(registry, "_loaded", False)
    return site


def test_submit_ships_the_plugins_the_job_uses_and_only_those(plugin, tmp_path):
    staging = tmp_path / "staging"
    staging.mkdir()
    env = cluster.runtime_env(parse_job(JOB), staging)
    mpq_source = os.path.dirname(registry.__file__)
    assert env["py_modules"] == [mpq_source, str(plugin / "mpq_posterize")]
    shipped = staging / "mpq_posterize-0.1.0.dist-info" / "entry_points.txt"
    assert "posterize = mpq_posterize:Posterize" in shipped.read_text()

    builtin_only = tmp_path / "builtin"
    builtin_only.mkdir()
    env = cluster.runtime_env(parse_job({**JOB, "codecs": [{"name": "jpeg", "settings": [10]}]}), builtin_only)
    assert env["py_modules"] == [mpq_source] and not list(builtin_only.iterdir())


@pytest.mark.slow
def test_what_submit_ships_registers_the_plugin_where_it_is_not_installed(plugin, tmp_path):
    """As Ray lays a runtime environment out on a node: the working directory the current one
    and on the path, each py_module unpacked into a folder of its own on the path; the
    plugin's install folder is not there."""
    staging = tmp_path / "staging"
    staging.mkdir()
    env = cluster.runtime_env(parse_job(JOB), staging)
    unpacked = []
    for i, module in enumerate(env["py_modules"][1:]):  # mpq itself is installed here anyway
        unpacked.append(tmp_path / f"pkg{i}")
        shutil.copytree(module, unpacked[-1] / os.path.basename(module))
    path = os.pathsep.join([str(staging), *map(str, unpacked)])
    code = "from mpq import registry; print(registry.get('codec', 'posterize').__module__)"
    res = subprocess.run([sys.executable, "-c", code], cwd=staging, env={**os.environ, "PYTHONPATH": path},
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.strip() == "mpq_posterize"
    without = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True,
                             env={**os.environ, "PYTHONPATH": os.pathsep.join(map(str, unpacked))})
    assert "unknown codec 'posterize'" in without.stderr  # the shipped entry points are what found it


@pytest.mark.slow
def test_a_job_with_the_plugin_runs_and_lists_it(plugin, tmp_path):
    from mpq.cli import _component_help

    assert "posterize" in registry.names("codec")
    help_lines = _component_help("codec", "posterize", registry.get("codec", "posterize"))
    assert "default sweep [2, 4, 6]" in help_lines[1] and "integer in [1, 8]" in help_lines[1]
    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump(JOB))
    env = {**os.environ, "PYTHONPATH": str(plugin)}
    res = subprocess.run([sys.executable, "-m", "mpq.cli", "run", str(job), "--output", str(tmp_path / "out"),
                          "--engine", "serial", "--no-progress"], capture_output=True, text=True, env=env)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "2 rows written (0 with errors)" in res.stdout
