"""Loading pretrained models through transformers' own loaders and caches."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable

from mpq.sources.hf import offline_hint

BUILTIN_PREFIX = "builtin:"


def mpq_cache() -> Path:
    """mpq's own cache (built-in pipeline-check models, encoded outputs)."""
    root = os.environ.get("MPQ_CACHE") or os.path.join(os.environ.get("XDG_CACHE_HOME", "~/.cache"), "mpq")
    return Path(root).expanduser()


def from_pretrained(loader: Callable[..., Any], model_id: str, **kwargs) -> Any:
    """``loader.from_pretrained`` with one clear message when the model is not to be had."""
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    try:
        return loader.from_pretrained(model_id, **kwargs)
    except OSError as exc:
        raise offline_hint("model", model_id, exc) from exc


def revision_of(model: Any) -> str:
    return getattr(model.config, "_commit_hash", None) or "local"


def torch_dtype(precision: str, device: str):
    import torch

    if device == "cpu" or precision == "fp32":
        return torch.float32
    return {"bf16": torch.bfloat16, "fp16": torch.float16}[precision]
