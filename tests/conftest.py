"""Shared fixtures: tiny random-initialised models, built and booted once per test session.

``tiny_model("llama")`` returns a :class:`TinyModel` with the booted TransformerBridge, the
directory it was saved to (to load an independent HF copy with the same weights) and whether its
MLP is gated. Architectures: see ``models.ARCHITECTURES``.
"""

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from models import ARCHITECTURES, boot_tiny_bridge, load_hf_model


@dataclass
class TinyModel:
    """A tiny booted bridge plus where its weights live."""

    arch: str
    bridge: Any
    path: Path
    gated: bool

    def hf_model(self) -> Any:
        """A fresh, independent HF copy of the same weights (eval mode, eager attention)."""
        return load_hf_model(self.path)


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], TinyModel]:
    """Factory fixture: ``tiny_model(arch)`` boots (once per session) a tiny ``arch`` bridge."""
    cache: dict[str, TinyModel] = {}

    def get(arch: str) -> TinyModel:
        if arch not in cache:
            path = tmp_path_factory.mktemp(f"tiny-{arch}")
            bridge = boot_tiny_bridge(arch, path)
            cache[arch] = TinyModel(arch, bridge, path, ARCHITECTURES[arch])
        return cache[arch]

    return get
