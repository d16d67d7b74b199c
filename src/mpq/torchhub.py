"""Weights that libraries download by URL into torch.hub's cache (CompressAI's zoo,
torchvision backbones): ``$TORCH_HOME/hub/checkpoints/<file name of the URL>``."""

from __future__ import annotations

import os
import urllib.request
from pathlib import Path
from urllib.parse import urlparse

from mpq.components import Asset, offline, offline_hint


class TorchHubCheckpoint(Asset):
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
