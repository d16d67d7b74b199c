"""One registry for every pluggable component: sources, codecs, tasks and metrics.

Built-in components register themselves when their module is imported; other packages
add components through the entry-point groups ``mpq.sources``, ``mpq.codecs``,
``mpq.tasks`` and ``mpq.metrics`` (each entry point names a module to import or a class
that is registered under the entry point's name).
"""

from __future__ import annotations

import importlib
from importlib.metadata import entry_points
from typing import Any, Callable

KINDS = ("source", "codec", "task", "metric")
ENTRY_POINT_GROUPS = {kind: f"mpq.{kind}s" for kind in KINDS}

# Modules whose import registers the built-in components.
_BUILTIN_MODULES = (
    "mpq.sources.samples",
    "mpq.sources.folder",
    "mpq.sources.hf",
    "mpq.sources.audio_samples",
    "mpq.sources.musdb",
    "mpq.sources.commonvoice",
    "mpq.sources.synthetic",
    "mpq.sources.text",
    "mpq.codecs.image",
    "mpq.codecs.intra",
    "mpq.codecs.learned",
    "mpq.codecs.hific",
    "mpq.codecs.audio",
    "mpq.codecs.speech",
    "mpq.codecs.neural_audio",
    "mpq.tasks.classify",
    "mpq.tasks.segment",
    "mpq.tasks.detect",
    "mpq.tasks.asr",
    "mpq.tasks.separate",
    "mpq.tasks.ocr",
    "mpq.metrics.fidelity",
    "mpq.metrics.lpips",
    "mpq.metrics.audio",
    "mpq.metrics.dists",
    "mpq.metrics.ssimulacra",
    "mpq.metrics.speech",
)

_registry: dict[str, dict[str, Any]] = {kind: {} for kind in KINDS}
_loaded = False


class UnknownComponent(KeyError):
    def __init__(self, kind: str, name: str):
        self.kind, self.name = kind, name
        super().__init__(f"unknown {kind} {name!r}; valid choices: {', '.join(names(kind))}")

    def __str__(self) -> str:
        return self.args[0]


def register(kind: str, name: str) -> Callable[[type], type]:
    """Class decorator: ``@register("codec", "jpeg")``. The class gets ``.name = name``."""
    if kind not in KINDS:
        raise ValueError(f"unknown component kind {kind!r}; valid choices: {', '.join(KINDS)}")

    def decorate(cls: type) -> type:
        existing = _registry[kind].get(name)
        if existing is not None and existing is not cls:
            raise ValueError(f"{kind} {name!r} is registered twice: {existing} and {cls}")
        cls.name = name
        _registry[kind][name] = cls
        return cls

    return decorate


def load_all() -> None:
    """Import built-in modules and entry-point plugins once."""
    global _loaded
    if _loaded:
        return
    _loaded = True
    for module in _BUILTIN_MODULES:
        importlib.import_module(module)
    for kind, group in ENTRY_POINT_GROUPS.items():
        for ep in entry_points(group=group):
            obj = ep.load()
            if isinstance(obj, type) and ep.name not in _registry[kind]:
                register(kind, ep.name)(obj)


def get(kind: str, name: str) -> Any:
    load_all()
    try:
        return _registry[kind][name]
    except KeyError:
        raise UnknownComponent(kind, name) from None


def names(kind: str) -> list[str]:
    load_all()
    return sorted(_registry[kind])


def items(kind: str) -> list[tuple[str, Any]]:
    load_all()
    return sorted(_registry[kind].items())


def description(cls: type) -> str:
    """A component's one-line description: its ``description`` attribute, else the first line
    of its own docstring (not a base class's); "" when it has neither."""
    text = getattr(cls, "description", None) or (cls.__dict__.get("__doc__") or "").strip()
    return text.splitlines()[0].strip() if text else ""
