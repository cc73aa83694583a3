"""The folder list is the architecture: each layer imports only the layers below it, no module
imports another's private name, and the public surface is exactly what ``__all__`` says."""

import ast
import importlib
import pkgutil
from pathlib import Path

import pytest

import tl_lape

PACKAGE = Path(tl_lape.__file__).parent

#: The walk of the data, bottom to top. A module may import from its own layer and the layers
#: before it, never from a later one. The model-free core is the package's top-level modules.
LAYERS = ["core", "sources", "collection", "interventions", "judging", "experiments", "cli"]


def _layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in LAYERS else "core"


def _modules() -> list[tuple[str, Path]]:
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE.parent).with_suffix("")
        name = ".".join(rel.parts)
        found.append((name.removesuffix(".__init__"), path))
    return found


def _imports(path: Path) -> list[ast.ImportFrom | ast.Import]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return [n for n in ast.walk(tree) if isinstance(n, ast.ImportFrom | ast.Import)]


def test_every_module_lives_in_a_known_layer() -> None:
    folders = {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").exists()}
    assert folders == set(LAYERS[1:])


def test_no_layer_imports_a_later_one() -> None:
    climbs = []
    for name, path in _modules():
        if name in ("tl_lape", "tl_lape.__main__"):
            continue  # the package root re-exports every layer; ``python -m tl_lape`` runs the CLI
        own = LAYERS.index(_layer(name))
        for node in _imports(path):
            targets = (
                [node.module or ""]
                if isinstance(node, ast.ImportFrom)
                else [a.name for a in node.names]
            )
            for target in targets:
                if target == "tl_lape":
                    climbs.append(f"{name} imports the package root")
                elif target.startswith("tl_lape.") and LAYERS.index(_layer(target)) > own:
                    climbs.append(f"{name} ({_layer(name)}) imports {target}")
    assert climbs == []


def test_no_module_imports_a_private_name_of_another() -> None:
    offenders = []
    for name, path in _modules():
        for node in _imports(path):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("tl_lape"):
                offenders += [
                    f"{name}: from {node.module} import {alias.name}"
                    for alias in node.names
                    if alias.name.startswith("_") and not alias.name.startswith("__")
                ]
    assert offenders == []


@pytest.mark.parametrize(
    "old",
    [
        "tl_lape.collect",
        "tl_lape.checkpoint",
        "tl_lape.distributed",
        "tl_lape.diffmean",
        "tl_lape.evaluation",
        "tl_lape.steering",
        "tl_lape.steering_study",
        "tl_lape.hooks",
        "tl_lape.generation",
        "tl_lape.metrics",
        "tl_lape.identification",
        "tl_lape.analysis",
        "tl_lape.corpora",
        "tl_lape.models",
        "tl_lape.demo",
        "tl_lape.windows",
        "tl_lape._io",
    ],
)
def test_old_flat_module_paths_are_gone(old: str) -> None:
    with pytest.raises(ModuleNotFoundError):
        importlib.import_module(old)


def test_package_all_names_exist_and_are_defined_in_the_library() -> None:
    for name in tl_lape.__all__:
        obj = getattr(tl_lape, name)
        if name != "__version__" and hasattr(obj, "__module__"):
            assert obj.__module__.startswith("tl_lape."), name


def test_module_all_lists_only_names_defined_there() -> None:
    """A module's ``__all__`` names what it defines; a name defined elsewhere is imported from
    its home, so there is one import path per name."""
    stray = []
    for info in pkgutil.walk_packages(tl_lape.__path__, "tl_lape."):
        if info.name.endswith(".__main__"):
            continue  # running it is the command line
        module = importlib.import_module(info.name)
        if info.ispkg:
            continue
        for name in getattr(module, "__all__", []):
            obj = getattr(module, name)
            home = getattr(obj, "__module__", None)
            if callable(obj) and home not in (None, "typing") and home != module.__name__:
                stray.append(f"{info.name}.{name} is defined in {home}")
    assert stray == []


def test_what_public_functions_return_is_public() -> None:
    """``steer`` returns SteeringOutputs; a user can import every returned class from the root."""
    import typing

    missing = []
    for name in tl_lape.__all__:
        obj = getattr(tl_lape, name)
        if not callable(obj) or isinstance(obj, type):
            continue
        try:
            hints = typing.get_type_hints(obj)
        except Exception:
            continue
        ret = hints.get("return")
        for cls in (ret, *typing.get_args(ret)):
            if (
                isinstance(cls, type)
                and cls.__module__.startswith("tl_lape.")
                and not cls.__name__.startswith("_")
                and cls.__name__ not in tl_lape.__all__
            ):
                missing.append(f"{name} returns {cls.__name__}")
    assert missing == []
