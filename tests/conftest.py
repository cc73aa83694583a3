"""Shared fixtures: tiny random-initialised models, built and booted once per test session.

``tiny_model("llama")`` returns a :class:`TinyModel` with the booted TransformerBridge, the
directory it was saved to (to load an independent HF copy with the same weights) and whether its
MLP is gated. Architectures: see ``models.ARCHITECTURES``. ``handbook_cache`` is a cache folder
holding the Debian handbook parsed once per session (the tests skip without the package).
``text_corpus`` is a folder of ``<lang>.txt`` files for ``--corpus text:DIR``.
"""

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from models import ARCHITECTURES, SENTENCES, boot_tiny_bridge, load_hf_model

from tl_lape.errors import LapeError
from tl_lape.sources.corpora import PAPER_LANGUAGES, find_debian_handbook, load_debian_handbook


@pytest.fixture(scope="session")
def handbook_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A cache directory holding the parsed book (parsed once per test session)."""
    cache = tmp_path_factory.mktemp("tl_lape_cache")
    try:
        find_debian_handbook(cache_dir=cache)
    except LapeError as err:
        pytest.skip(f"debian-handbook unavailable: {err}")
    load_debian_handbook(PAPER_LANGUAGES, split="all", cache_dir=cache)
    return cache


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


@pytest.fixture()
def text_corpus(tmp_path: Path) -> Path:
    """A ``text:DIR`` corpus: ``DIR/<lang>.txt`` of the tiny models' sentences, three times."""
    folder = tmp_path / "corpus"
    folder.mkdir()
    for lang, sentences in SENTENCES.items():
        (folder / f"{lang}.txt").write_text("\n".join(sentences * 3), encoding="utf-8")
    return folder
