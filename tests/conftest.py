"""Shared fixtures: tiny random-initialised models, built and booted once per test session.

``tiny_model("llama")`` returns a :class:`TinyModel` with the booted TransformerBridge, the
directory it was saved to (to load an independent HF copy with the same weights) and whether its
MLP is gated. Architectures: see ``models.ARCHITECTURES``. ``handbook_cache`` is a cache folder
holding the Debian handbook parsed once per session (the tests skip without the package).
``text_corpus`` is a folder of ``<lang>.txt`` files for ``--corpus text:DIR``. ``browser``
renders a page in headless Chromium as a person would see it (skipped without Chromium).
``llama``, ``stats`` and ``neurons``: the tiny llama, its statistics on ``CORPUS`` (windows of 16
tokens) and its 10% LAPE set, shared by the evaluation, steering and analysis tests.
"""

import os
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from tiny_models import ARCHITECTURES, CORPUS, SENTENCES, boot_tiny_bridge, load_hf_model

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


CHROMIUM = Path("/usr/bin/chromium")


@dataclass
class Rendered:
    """A page as headless Chromium shows it: its DOM after loading, the console's complaints."""

    dom: str
    console: list[str]


@pytest.fixture()
def browser(tmp_path: Path) -> Callable[..., Rendered]:
    """``browser(page, png=None, size="1000,800")``: load ``page`` in headless Chromium, write a
    screenshot to ``png`` if given, return the DOM and any console errors."""
    if not CHROMIUM.exists():
        pytest.skip("headless Chromium missing: apt-get install chromium (Debian)")
    flags = [
        str(CHROMIUM),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={tmp_path / 'chromium-profile'}",
        "--enable-logging=stderr",
        "--v=0",
    ]

    def console_of(log: str) -> list[str]:
        return [line for line in log.splitlines() if "CONSOLE" in line or "Uncaught" in line]

    def render(page: Path, *, png: Path | None = None, size: str = "1000,800") -> Rendered:
        console = []
        if png is not None:
            shot = subprocess.run(
                [*flags, f"--screenshot={png}", f"--window-size={size}", page.as_uri()],
                capture_output=True,
                text=True,
                timeout=120,
            )
            assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", shot.stderr[-2000:]
            console += console_of(shot.stderr)
        dom = subprocess.run(
            [*flags, "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120
        )
        return Rendered(dom=dom.stdout, console=console + console_of(dom.stderr))

    return render


@pytest.fixture(scope="session")
def llama(tiny_model: Callable[[str], TinyModel]) -> TinyModel:
    """The tiny llama (gated MLP)."""
    return tiny_model("llama")


@pytest.fixture(scope="session")
def stats(llama: TinyModel) -> Any:
    """The tiny llama's statistics on :data:`tiny_models.CORPUS`, windows of 16 tokens."""
    from tl_lape.collection.engine import collect_activation_stats

    return collect_activation_stats(llama.bridge, CORPUS, seq_len=16, progress=False)


@pytest.fixture(scope="session")
def neurons(stats: Any) -> Any:
    """The 10% LAPE set of :func:`stats`."""
    from tl_lape.selection import identify_language_neurons

    return identify_language_neurons(stats, top_rate=0.1)
