"""Shared helpers for the components (codecs, tasks, metrics) that load pretrained weights:
transformers models from the Hugging Face hub (``HubModel``, ``from_pretrained``),
checkpoints in torch.hub's cache (``TorchHubCheckpoint``), and mpq's own cache, where
built-in tiny models are written once (``builtin_model``; written whole by ``storage.write_local``,
so that concurrent actors never see half a model)."""

from __future__ import annotations

import os
import urllib.request
from pathlib import Path
from typing import Any, Callable, Iterable
from urllib.parse import urlparse

from mpq.components import Asset, offline, offline_hint
from mpq.storage import write_local

BUILTIN_PREFIX = "builtin:"


def known_builtin(model: str, builtins: tuple[str, ...], otherwise: str = "a hub id or a local folder") -> str:
    """``model``, unless it names a built-in model that does not exist (a job-file check)."""
    if model.startswith(BUILTIN_PREFIX) and model not in builtins:
        raise ValueError(f"unknown built-in model {model!r}; valid choices: {', '.join(builtins)}, {otherwise}")
    return model


def mpq_cache() -> Path:
    """mpq's own cache (built-in pipeline-check models, encoded outputs)."""
    root = os.environ.get("MPQ_CACHE") or os.path.join(os.environ.get("XDG_CACHE_HOME", "~/.cache"), "mpq")
    return Path(root).expanduser()


def builtin_model(name: str, build: Callable[[], Iterable[Any]]) -> str:
    """The folder of a built-in pipeline-check model in mpq's cache, written once and whole:
    each object ``build`` returns (the model, its processor...) saved there by its
    ``save_pretrained``. ``build`` runs after ``torch.manual_seed(0)``, so every machine
    writes the same random weights."""
    path = mpq_cache() / "models" / name
    if not (path / "config.json").exists():
        import torch

        torch.manual_seed(0)
        parts = list(build())

        def save(tmp: str) -> None:
            for part in parts:
                part.save_pretrained(tmp)

        write_local(path, save)
    return str(path)


def from_pretrained(loader: Callable[..., Any], model_id: str, **kwargs) -> Any:
    """``loader.from_pretrained`` with one clear message when the model is not to be had."""
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    try:
        return loader.from_pretrained(model_id, **kwargs)
    except OSError as exc:
        raise offline_hint("model", model_id, exc) from exc


# Any one of these in the cache means the weights are there (a sharded index names its shards).
# Processor settings: transformers 5 saves processor_config.json, the hub's older models have preprocessor_config.json.
PROCESSOR_FILES = ("processor_config.json", "preprocessor_config.json")
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")


class HubModel(Asset):
    """A transformers model on the hub (or in a local folder), fetched by the very loaders
    that load it, so exactly the files loading needs land in the Hugging Face cache."""

    kind = "model"

    def __init__(self, model_id: str, revision: str | None = None, loaders: tuple[str, ...] = ("AutoModel",),
                 files: tuple[tuple[str, ...], ...] = ()):
        super().__init__(model_id)
        # What the loaders need besides config and weights (processor, tokenizer), checked offline:
        # any one file of each group.
        self.revision, self.loaders, self.files = revision, loaders, files

    @property
    def key(self) -> tuple:
        return ("model", self.name, self.revision)

    def fetch(self) -> None:
        import transformers

        kw = {"revision": self.revision} if self.revision else {}
        for loader in self.loaders:
            from_pretrained(getattr(transformers, loader), self.name, **kw)

    def check(self) -> None:
        if Path(self.name).expanduser().is_dir():
            return
        from huggingface_hub import hf_hub_download, try_to_load_from_cache

        try:  # online: a small download; offline: from the cache
            hf_hub_download(self.name, "config.json", revision=self.revision)
        except Exception as exc:
            raise offline_hint("model", self.name, exc) from exc
        cached = (try_to_load_from_cache(self.name, f, revision=self.revision) for f in WEIGHT_FILES)
        if offline() and not any(isinstance(path, str) for path in cached):
            raise offline_hint("model", self.name, FileNotFoundError("its config is cached but not its weights"))
        missing = [
            " or ".join(group) for group in self.files
            if not any(isinstance(try_to_load_from_cache(self.name, f, revision=self.revision), str) for f in group)
        ]
        if offline() and missing:
            raise offline_hint("model", self.name, FileNotFoundError(f"its weights are cached but not {', '.join(missing)}"))


class TorchHubCheckpoint(Asset):
    """Weights that libraries download by URL into torch.hub's cache (CompressAI's zoo,
    torchvision backbones): ``$TORCH_HOME/hub/checkpoints/<file name of the URL>``."""

    kind = "checkpoint"

    def __init__(self, name: str, url: str):
        super().__init__(name)
        self.url = url

    @property
    def key(self) -> tuple:
        return ("checkpoint", self.url)

    @property
    def path(self) -> Path:
        """Where ``torch.hub.load_state_dict_from_url`` looks for it (read at call time: TORCH_HOME)."""
        import torch.hub

        return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(self.url).path)

    def fetch(self) -> None:
        if self.path.exists():
            return
        import torch.hub

        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            torch.hub.download_url_to_file(self.url, str(self.path), progress=False)
        except OSError as exc:  # urllib errors are OSErrors
            raise offline_hint(self.kind, self.name, exc) from exc

    def check(self) -> None:
        if self.path.exists():
            return
        if offline():
            raise offline_hint(self.kind, self.name, FileNotFoundError(f"no {self.path}"))
        try:  # not cached: it will be downloaded when loaded, if the URL answers
            urllib.request.urlopen(urllib.request.Request(self.url, method="HEAD"), timeout=10).close()
        except OSError as exc:
            raise offline_hint(self.kind, self.name, exc) from exc


def load_processor_and_model(task: Any, processor_cls: Any, model_cls: Any, path: str) -> None:
    """A task's processor and model from ``path`` (hub id or folder) at the task's revision,
    on its device in its precision; records the model id and revision that every row names."""
    kw = {"revision": task.options.revision} if task.options.revision else {}
    task.processor = from_pretrained(processor_cls, path, **kw)
    task.model = from_pretrained(model_cls, path, **kw)
    task.dtype = torch_dtype(task.precision, task.device)
    task.model.to(task.device, dtype=task.dtype).eval()
    task.model_id, task.model_revision = task.options.model, revision_of(task.model)


def revision_of(model: Any) -> str:
    return getattr(model.config, "_commit_hash", None) or "local"


def weights_digest(model: Any) -> str:
    """``sha256:`` and the first 16 hex digits of the hash of a torch module's weights (names and bytes)."""
    import hashlib

    import torch

    h = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return f"sha256:{h.hexdigest()[:16]}"


def torch_dtype(precision: str, device: str):
    import torch

    if device == "cpu" or precision == "fp32":
        return torch.float32
    return {"bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def to_device(arrays: list, device: str) -> list:
    """NumPy arrays as torch tensors on ``device``: those of one shape and dtype stacked and
    copied in one transfer, to a GPU from pinned memory without waiting (a blocking copy per
    image waited for the GPU each time). The values are the arrays' own: nothing changes on a CPU."""
    import numpy as np
    import torch

    pinned = torch.device(device).type == "cuda"
    out: list = [None] * len(arrays)
    groups: dict[tuple, list[int]] = {}
    for i, a in enumerate(arrays):
        groups.setdefault((a.shape, a.dtype.str), []).append(i)
    for (shape, dtype), idx in groups.items():
        host = torch.empty((len(idx), *shape), dtype=torch.from_numpy(np.empty(0, dtype)).dtype, pin_memory=pinned)
        np.stack([arrays[i] for i in idx], out=host.numpy())
        for i, t in zip(idx, host.to(device, non_blocking=pinned)):
            out[i] = t
    return out


def processor_images(processor: Any, images: list, device: str) -> list:
    """Images for a transformers image processor: already on ``device`` where it preprocesses
    with torch there (its torchvision backend, given ``device=``); else as they are."""
    from transformers.image_processing_backends import TorchvisionBackend

    return to_device(list(images), device) if isinstance(processor, TorchvisionBackend) else list(images)
