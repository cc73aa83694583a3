"""Doctest fixtures: the names the docstring examples of ``tl_lape`` use, on a tiny model.

``pytest`` runs the examples of every ``tl_lape`` module (``--doctest-modules``, see
pyproject.toml). Examples that need a model find these names in their namespace:

* ``model``: a tiny random-initialised LLaMA-style ``TransformerBridge`` built locally
  (tests/tiny_models.py; 2 layers, d_mlp 64, nothing downloaded);
* ``corpus``: a few sentences per language (en, fr, zh, ru); ``stats`` and ``neurons``:
  statistics collected on it and the neurons selected from them (``top_rate=0.1``);
* ``tokens``, ``en_tokens``, ``fr_tokens``: token ids of an English and a French sentence;
* ``path``, ``languages``: a neuron file in the paper's format for ``model``, and its languages.

They are built once per session, and only when an example that runs (not ``+SKIP``) uses one.
"""

import doctest
import os
import re
import sys
from pathlib import Path
from typing import Any

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

_TESTS = Path(__file__).resolve().parent / "tests"
_NAMES = (
    "model",
    "corpus",
    "stats",
    "neurons",
    "tokens",
    "en_tokens",
    "fr_tokens",
    "path",
    "languages",
)
_USES = re.compile(r"\b(" + "|".join(_NAMES) + r")\b")


def _runs_and_uses_names(item: pytest.Item) -> bool:
    """Whether a doctest item has an example that runs and mentions one of :data:`_NAMES`."""
    test = getattr(item, "dtest", None)
    if test is None:
        return False
    return any(
        not example.options.get(doctest.SKIP, False) and _USES.search(example.source)
        for example in test.examples
    )


@pytest.fixture(scope="session")
def _doctest_objects(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    if str(_TESTS) not in sys.path:
        sys.path.insert(0, str(_TESTS))
    from tiny_models import SENTENCES, boot_tiny_bridge

    from tl_lape import collect_activation_stats, identify_language_neurons

    model = boot_tiny_bridge("llama", tmp_path_factory.mktemp("doctest-llama"))
    corpus = {lang: texts * 2 for lang, texts in SENTENCES.items()}
    stats = collect_activation_stats(model, corpus, seq_len=16, progress=False)
    neurons = identify_language_neurons(stats, top_rate=0.1)
    path = tmp_path_factory.mktemp("doctest-neurons") / "tiny.neuron.pth"
    neurons.to_rucaibox(path)
    return {
        "model": model,
        "corpus": corpus,
        "stats": stats,
        "neurons": neurons,
        "tokens": model.to_tokens(SENTENCES["en"][0]),
        "en_tokens": model.to_tokens(SENTENCES["en"][0]),
        "fr_tokens": model.to_tokens(SENTENCES["fr"][0]),
        "path": path,
        "languages": list(neurons.languages),
    }


@pytest.fixture(autouse=True)
def _doctest_model(request: pytest.FixtureRequest) -> None:
    """Put the tiny model and its friends into the namespace of the examples that use them."""
    if not _runs_and_uses_names(request.node):
        return
    namespace = request.getfixturevalue("doctest_namespace")
    namespace.update(request.getfixturevalue("_doctest_objects"))
