"""The documentation as a newcomer meets it: every relative link and anchor of README.md and
docs/*.md resolves, no page names a file the repository lacks, and docs/results.md's column
reference names exactly the columns a row can have (the base columns plus every registered
component's own, so a new component only needs its lines there)."""

import re
import subprocess
import unicodedata

import pytest
from helpers import ROOT

from mpq import registry
from mpq.results import BASE_SCHEMA
from mpq.targets import COLUMNS as TARGET_COLUMNS

PAGES = sorted([ROOT / "README.md", *ROOT.glob("*.md"), *(ROOT / "docs").glob("*.md")])
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def anchors(page) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces as hyphens, repeats numbered."""
    seen: dict[str, int] = {}
    out = set()
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
    for heading in re.findall(r"^#+ +(.+?) *$", text, re.M):
        slug = "".join(c for c in heading.lower() if c in " -_" or unicodedata.category(c)[0] in "LN").replace(" ", "-")
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        out.add(slug if n == 0 else f"{slug}-{n}")
    return out


def links(page) -> list[str]:
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
    return [t for t in LINK.findall(text) if "://" not in t and not t.startswith("mailto:")]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_and_anchor_resolves(page):
    broken = []
    for target in links(page):
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        if not dest.exists():
            broken.append(f"{target}: no {dest.relative_to(ROOT) if dest.is_relative_to(ROOT) else dest}")
        elif anchor and (dest.suffix != ".md" or anchor not in anchors(dest)):
            broken.append(f"{target}: no heading #{anchor} in {dest.name}")
    assert not broken, f"{page.name}: " + "; ".join(broken)


def test_the_link_checker_sees_a_broken_link_and_anchor(tmp_path):
    (tmp_path / "a.md").write_text("# Top part\n\n## Top part\n\n[b](b.md) [c](#top-part-1) [d](#nope)\n")
    assert anchors(tmp_path / "a.md") == {"top-part", "top-part-1"}
    assert links(tmp_path / "a.md") == ["b.md", "#top-part-1", "#nope"]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_page_names_a_file_the_repository_lacks(page):
    """Files named in code spans (`cluster.yaml`, `tests/test_x.py`, `mpq/codecs/image.py`): some
    file of the repository has that path or ends with it; placeholders (upper case) aside."""
    files = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                           capture_output=True, text=True, check=True).stdout.splitlines()
    names = re.findall(r"`([\w./-]+\.(?:md|py|yaml|toml))`", page.read_text())
    missing = [n for n in names if not n[0].isupper() and not any(f == n or f.endswith("/" + n) for f in files)]
    assert not missing, f"{page.name} names {missing}"
    assert "REFERENCE.md" not in page.read_text()


def documented_columns() -> set[str]:
    """Column names in the first cell of the tables under docs/results.md's "## Columns"."""
    text = (ROOT / "docs" / "results.md").read_text()
    section = text.split("\n## Columns\n", 1)[1].split("\n## ", 1)[0]
    cells = [line.split("|")[1] for line in section.splitlines() if line.startswith("| `")]
    return {name for cell in cells for name in re.findall(r"`([^`]+)`", cell)}


def test_the_column_reference_names_every_column_a_row_can_have():
    expected = {f.name for f in BASE_SCHEMA} | set(TARGET_COLUMNS)
    for kind in registry.KINDS:
        for _, cls in registry.items(kind):
            expected |= set(cls.columns)
    documented = documented_columns()
    assert not expected - documented, f"docs/results.md lacks {sorted(expected - documented)}"
    assert not documented - expected, f"docs/results.md documents columns no row has: {sorted(documented - expected)}"


def test_the_example_error_of_jobs_md_is_what_a_bad_name_gets():
    from mpq.spec import JobSpecError, parse_job

    (example,) = re.findall(r"`(codecs\[1\]\.name: unknown codec [^`]*)`", (ROOT / "docs" / "jobs.md").read_text())
    with pytest.raises(JobSpecError) as err:
        parse_job({"name": "x", "datasets": [{"name": "d", "source": {"samples": "skimage"}}],
                   "codecs": [{"name": "jpeg"}, {"name": "jpg"}]})
    (problem,) = err.value.problems
    head, _, shown = example.partition("valid choices: ")
    assert problem == head + "valid choices: " + ", ".join(registry.names("codec"))  # every codec, in order
    assert set(shown.split(", ")) - {"..."} <= set(registry.names("codec"))
