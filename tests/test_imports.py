"""The import rules, read statically (``ast``) from the source: every import statement,
those inside functions included.

- Components (``mpq.codecs``, ``mpq.tasks``, ``mpq.metrics``, ``mpq.sources``) import only
  the core (``mpq.components``, ``mpq.media``, ``mpq.registry``), the shared helpers
  (``mpq.hub``, ``mpq.storage``) and modules of their own package: never another component package, the
  engine or the results.
- The core and the shared helpers import only each other.
- Outside the component packages no module imports a component module: the rest of mpq
  reaches components through ``mpq.registry``.
- The floor (``mpq.targets``: rate targets and their columns; ``mpq.version``) imports no
  other mpq module, so every layer may import it.
- No import cycle among mpq's modules.
- Nothing of Ray's ``_private`` packages (``ray._private``, ``ray.autoscaler._private``),
  imported or as an attribute: they change without notice between Ray's releases.
"""

import ast
from pathlib import Path

from helpers import ROOT

COMPONENT_PACKAGES = ("mpq.codecs", "mpq.tasks", "mpq.metrics", "mpq.sources")
SHARED = ("mpq.components", "mpq.media", "mpq.registry", "mpq.hub", "mpq.storage")
FLOOR = ("mpq.targets", "mpq.version")


def modules(src: Path) -> dict[str, Path]:
    """Module name → file, for every module of the ``mpq`` package under ``src``."""
    out = {}
    for path in sorted((src / "mpq").rglob("*.py")):
        parts = path.relative_to(src).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def edges(src: Path) -> list[tuple[str, str, int]]:
    """(importer, imported mpq module, line) for every import of an mpq module."""
    mods = modules(src)
    out = []
    for name, path in mods.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative: from the importer's package
                    base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
                # `from mpq import registry` imports the module mpq.registry; `from mpq.x import f` the module mpq.x
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in mods else base for a in node.names]
            else:
                continue
            out += [(name, t, node.lineno) for t in dict.fromkeys(targets) if t == "mpq" or t.startswith("mpq.")]
    return out


def package_of(module: str) -> str | None:
    return next((p for p in COMPONENT_PACKAGES if module == p or module.startswith(p + ".")), None)


def rule_breaches(src: Path) -> list[str]:
    breaches = []
    for importer, target, line in edges(src):
        own = package_of(importer)
        if own is not None and package_of(target) != own and target not in SHARED:
            breaches.append(
                f"{importer} (line {line}) imports {target}: a component module may import only "
                f"{', '.join(SHARED)} and its own package {own}"
            )
        elif importer in SHARED and target not in SHARED:
            breaches.append(f"{importer} (line {line}) imports {target}: the core and shared helpers import only {', '.join(SHARED)}")
        elif own is None and package_of(target) is not None:
            breaches.append(f"{importer} (line {line}) imports {target}: outside the component packages, components are reached through mpq.registry")
        if importer in FLOOR and target != importer:
            breaches.append(f"{importer} (line {line}) imports {target}: {', '.join(FLOOR)} are the floor and import no mpq module")
    return breaches


def cycles(src: Path) -> list[list[str]]:
    """One cycle through each strongly connected set of modules (Tarjan), as a path."""
    graph: dict[str, set[str]] = {m: set() for m in modules(src)}
    for importer, target, _ in edges(src):
        if target != importer:
            graph[importer].add(target)
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.add(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(path_within(graph, component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def path_within(graph: dict[str, set[str]], component: set[str]) -> list[str]:
    """A cycle inside one strongly connected set: walk from its first module until a repeat."""
    path = [min(component)]
    while True:
        nxt = min(w for w in graph[path[-1]] if w in component)
        if nxt in path:
            return path[path.index(nxt):] + [nxt]
        path.append(nxt)


def private_ray(src: Path) -> list[str]:
    """Every use of Ray's ``_private`` packages: imports and attribute chains; strings (a
    logger's name) are not uses."""
    found = []
    for name, path in modules(src).items():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                dotted = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and not node.level:
                dotted = [f"{node.module}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Attribute):
                dotted = [ast.unparse(node)]
            else:
                continue
            for d in dotted:
                parts = d.split(".")
                if parts[0] == "ray" and "_private" in parts:
                    found.append(f"{name} (line {node.lineno}): {d}")
    return sorted(set(found))


def test_the_import_rules_hold():
    src = ROOT / "src"
    assert edges(src), "no imports found: the checker reads nothing"
    breaches = rule_breaches(src)
    assert not breaches, "import rules broken:\n" + "\n".join(breaches)


def test_no_import_cycles():
    found = cycles(ROOT / "src")
    assert not found, "import cycles:\n" + "\n".join(" → ".join(c) for c in found)


def test_no_module_uses_rays_private_packages():
    found = private_ray(ROOT / "src")
    assert not found, "private Ray used:\n" + "\n".join(found)


def test_the_checker_finds_a_breach_and_a_cycle(tmp_path):
    """The rules above on a small tree that breaks both."""
    files = {
        "mpq/__init__.py": "",
        "mpq/components.py": "",
        "mpq/tasks/__init__.py": "",
        "mpq/tasks/t.py": "from mpq.components import Task\n\ndef f():\n    from mpq.sources.s import X\n",
        "mpq/sources/__init__.py": "",
        "mpq/sources/s.py": "from . import r\n",
        "mpq/sources/r.py": "from mpq.sources import s\n",
        "mpq/spec.py": "from mpq.targets import Target\nfrom mpq.sources.s import X\n",
        "mpq/targets.py": "from mpq import registry\n",
        "mpq/registry.py": "",
    }
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    assert rule_breaches(tmp_path) == [
        "mpq.spec (line 2) imports mpq.sources.s: outside the component packages, components are reached through mpq.registry",
        "mpq.targets (line 1) imports mpq.registry: mpq.targets, mpq.version are the floor and import no mpq module",
        "mpq.tasks.t (line 4) imports mpq.sources.s: a component module may import only "
        f"{', '.join(SHARED)} and its own package mpq.tasks",
    ]
    assert cycles(tmp_path) == [["mpq.sources.r", "mpq.sources.s", "mpq.sources.r"]]
    (tmp_path / "mpq/tasks/t.py").write_text(
        "import ray\nfrom ray._private import state\n\ndef f():\n    return ray._private.state.state.get(), 'ray._private.x'\n"
    )
    assert private_ray(tmp_path) == [
        "mpq.tasks.t (line 2): ray._private.state", "mpq.tasks.t (line 5): ray._private", "mpq.tasks.t (line 5): ray._private.state",
        "mpq.tasks.t (line 5): ray._private.state.state", "mpq.tasks.t (line 5): ray._private.state.state.get",
    ]
