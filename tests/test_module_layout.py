"""Names that moved between modules still import from their old paths, as the same objects; and
no module of tl_lape imports another module's private name."""

import ast
import importlib
from pathlib import Path

import pytest

import tl_lape

#: (old module, name, defining module) for every public name that moved.
MOVED = [
    ("tl_lape.steering", "generate_with_hooks", "tl_lape.generation"),
    ("tl_lape.steering", "generate_with_hook_sets", "tl_lape.generation"),
    ("tl_lape.steering", "LanguageIdentifier", "tl_lape.identification"),
    ("tl_lape.steering", "language_id_accuracy", "tl_lape.identification"),
    ("tl_lape.steering", "repetition_rate", "tl_lape.metrics"),
    ("tl_lape.steering", "sequence_nll", "tl_lape.metrics"),
    ("tl_lape.steering", "reference_nll", "tl_lape.metrics"),
    ("tl_lape.evaluation", "random_matched_neurons", "tl_lape.neurons"),
]


@pytest.mark.parametrize(("old", "name", "home"), MOVED)
def test_moved_names_import_from_their_old_module(old: str, name: str, home: str) -> None:
    defined = getattr(importlib.import_module(home), name)
    assert getattr(importlib.import_module(old), name) is defined
    assert name in importlib.import_module(old).__all__
    assert name in importlib.import_module(home).__all__
    assert defined.__module__ == home
    if name in tl_lape.__all__:
        assert getattr(tl_lape, name) is defined


@pytest.mark.parametrize("module", ["tl_lape.steering", "tl_lape.evaluation"])
def test_star_import_still_gives_every_listed_name(module: str) -> None:
    namespace: dict[str, object] = {}
    exec(f"from {module} import *", namespace)
    assert set(importlib.import_module(module).__all__) <= set(namespace)


def test_no_module_imports_a_private_name_of_another() -> None:
    offenders = []
    for path in sorted(Path(tl_lape.__file__).parent.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("tl_lape"):
                offenders += [
                    f"{path.name}: from {node.module} import {alias.name}"
                    for alias in node.names
                    if alias.name.startswith("_")
                ]
    assert offenders == []
