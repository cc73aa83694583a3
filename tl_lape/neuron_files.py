"""The files of a neuron set: tl_lape's checksummed JSON and the LAPE paper's ``.neuron.pth``.

:class:`~tl_lape.neurons.LanguageNeurons` reads and writes through these functions
(:meth:`~tl_lape.neurons.LanguageNeurons.save`, ``load``, ``to_rucaibox``, ``from_rucaibox``);
its documentation is there. The JSON document carries a format tag, a version and a SHA-256
checksum of its canonical content; it is read with the strict parser
:func:`~tl_lape.formats.parse_json` (repeated keys and keys of the same meaning, such as layers
``"3"`` and ``"03"``, refused), sizes beyond :data:`~tl_lape.formats.MAX_LAYERS` and
:data:`~tl_lape.formats.MAX_WIDTH` are refused before anything is allocated, and anything
inconsistent gets one :class:`~tl_lape.errors.LapeError` that names the file.
"""

import json
import os
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from tl_lape.checks import check_language_codes, check_languages, check_positive_int
from tl_lape.errors import LapeError
from tl_lape.formats import (
    MAX_LAYERS,
    MAX_WIDTH,
    atomic_path,
    check_output_file,
    check_size,
    existing_file,
    file_kind,
    json_checksum,
    parse_json,
)
from tl_lape.neurons import LanguageNeurons

__all__ = [
    "read_neurons_json",
    "read_rucaibox",
    "write_neurons_json",
    "write_rucaibox",
]

_FORMAT = "tl_lape.LanguageNeurons"
_VERSION = 1
#: The fields of the document (``"checksum"`` and ``"metadata"`` absent from older files).
_KEYS = frozenset(
    {"format", "version", "languages", "n_layers", "d_mlp", "neurons", "metadata", "checksum"}
)


def write_neurons_json(
    neurons: LanguageNeurons, path: str | os.PathLike[str], *, overwrite: bool = False
) -> None:
    """Write ``neurons`` as checksummed, human-readable JSON, atomically (``save``)."""
    check_output_file(path, "neuron-set file", overwrite=overwrite)
    header = {
        "format": _FORMAT,
        "version": _VERSION,
        "languages": list(neurons.languages),
        "n_layers": neurons.n_layers,
        "d_mlp": neurons.d_mlp,
    }
    blocks = []
    for lang, per_layer in zip(neurons.languages, neurons.neurons, strict=True):
        layers = [
            f"      {json.dumps(str(layer))}: {json.dumps(idx.tolist())}"
            for layer, idx in enumerate(per_layer)
            if idx.numel()
        ]
        body = "{\n" + ",\n".join(layers) + "\n    }" if layers else "{}"
        blocks.append(f"    {json.dumps(lang)}: {body}")
    metadata = json.dumps(neurons.metadata, indent=2, sort_keys=True, allow_nan=False)
    parts = [f"  {json.dumps(key)}: {json.dumps(value)}" for key, value in header.items()]
    parts.append('  "neurons": {\n' + ",\n".join(blocks) + "\n  }")
    parts.append('  "metadata": ' + metadata.replace("\n", "\n  "))
    text = "{\n" + ",\n".join(parts) + "\n}\n"
    checksum = json_checksum(json.loads(text))
    text = text[: -len("\n}\n")] + f',\n  "checksum": {json.dumps(checksum)}\n}}\n'
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def read_neurons_json(path: str | os.PathLike[str]) -> LanguageNeurons:
    """Read and verify a file written by :func:`write_neurons_json` (``load``)."""
    p = existing_file(path, "neuron set")
    advice = "re-create it with LanguageNeurons.save (or from_rucaibox for the paper's .pth)"
    kind = file_kind(p)
    if kind is not None and not kind.startswith("a JSON"):
        raise LapeError(
            f"{str(p)!r} is {kind}, not a neuron-set JSON file; give the file written by "
            "`tl-lape identify` (LanguageNeurons.save)"
        )
    doc = parse_json(p.read_bytes(), where=f"the neuron-set file {str(p)!r}", advice=advice)
    if not isinstance(doc, dict) or doc.get("format") != _FORMAT:
        found = doc.get("format") if isinstance(doc, dict) else type(doc).__name__
        raise LapeError(
            f'{str(p)!r} is not a LanguageNeurons file: expected "format": {_FORMAT!r}, '
            f"found {found!r}; {advice}"
        )
    if doc.get("version") != _VERSION:
        raise LapeError(
            f"{str(p)!r} has LanguageNeurons format version {doc.get('version')!r}; this "
            f"tl_lape reads version {_VERSION}; upgrade tl_lape or {advice}"
        )
    unknown = sorted(set(doc) - _KEYS)
    if unknown:
        raise LapeError(
            f"{str(p)!r} is damaged: it has the fields {unknown}, which no tl_lape writes "
            f"(it writes {sorted(_KEYS)}); restore it from a copy or {advice}"
        )
    expected = doc.get("checksum")
    if expected is not None:
        found = json_checksum(doc)
        if found != expected:
            raise LapeError(
                f"{str(p)!r} is damaged: the checksum of its content is {found}, but the "
                f"file records {expected}; restore it from a copy or {advice}"
            )
    try:
        languages = doc["languages"]
        n_layers = doc["n_layers"]
        d_mlp = doc["d_mlp"]
        neurons = doc["neurons"]
        metadata = doc.get("metadata", {})
        if not isinstance(neurons, dict) or not isinstance(languages, list):
            raise LapeError('"neurons" must be an object and "languages" a list')
        if not isinstance(metadata, dict):
            raise LapeError(
                f'"metadata" must be an object; received a {type(metadata).__name__}: '
                f"{str(metadata)[:60]!r}"
            )
        for name, value, most in (("n_layers", n_layers, MAX_LAYERS), ("d_mlp", d_mlp, MAX_WIDTH)):
            if name == "d_mlp" and value is None:  # a set of unknown width (from_rucaibox)
                continue
            check_size(value, f'"{name}"', most)
        dupes = sorted({k for k in languages if languages.count(k) > 1}, key=str)
        if dupes:
            raise LapeError(f'"languages" repeats {dupes!r}: {languages!r}')
        check_language_codes(languages, '"languages"')
        unknown = sorted(set(neurons) - set(languages))
        if unknown:
            raise LapeError(f'"neurons" has languages {unknown!r} missing from "languages"')
        indices = {}
        for lang in languages:
            per_layer = neurons.get(lang, {})
            if not isinstance(per_layer, dict):
                raise LapeError(f'"neurons"[{lang!r}] must be an object layer -> indices')
            converted = {}
            for key, value in per_layer.items():
                if not (isinstance(key, str) and key.isascii() and key.isdigit()):
                    raise LapeError(
                        f'"neurons"[{lang!r}] has a layer key {key!r} that is not a whole '
                        "number written in the digits 0-9"
                    )
                if int(key) >= n_layers:
                    raise LapeError(
                        f'"neurons"[{lang!r}] has layer {key}, outside 0..{n_layers - 1} '
                        f"(n_layers={n_layers})"
                    )
                if not isinstance(value, list) or not all(
                    isinstance(v, int) and not isinstance(v, bool) for v in value
                ):
                    raise LapeError(f'"neurons"[{lang!r}][{key!r}] must be a list of ints')
                outside = [v for v in value if v < 0 or (d_mlp is not None and v >= d_mlp)]
                if outside:
                    raise LapeError(
                        f'"neurons"[{lang!r}][{key!r}] holds neuron index {outside[0]}, '
                        + (
                            f"outside 0..{d_mlp - 1} (d_mlp={d_mlp})"
                            if d_mlp is not None
                            else "below 0"
                        )
                    )
                converted[int(key)] = value
            indices[lang] = converted
        return LanguageNeurons.from_indices(
            indices, n_layers=n_layers, d_mlp=d_mlp, metadata=metadata
        )
    except KeyError as err:
        raise LapeError(f"{str(p)!r} lacks the field {err}; {advice}") from None
    except LapeError as err:
        raise LapeError(f"{str(p)!r} has invalid content: {err}; {advice}") from None


def read_rucaibox(
    path: str | os.PathLike[str],
    languages: Sequence[str],
    *,
    n_layers: int | None = None,
    d_mlp: int | None = None,
    model: Any = None,
    metadata: Mapping[str, Any] | None = None,
) -> LanguageNeurons:
    """Read a neuron file released with the LAPE paper (``from_rucaibox``)."""
    p = existing_file(path, "neuron file")
    langs = check_languages(languages)
    if d_mlp is not None:
        d_mlp = check_positive_int(d_mlp, "d_mlp")
    if model is not None:
        from tl_lape._adapter import adapt

        adapter = adapt(model)
        for given, actual, name in (
            (n_layers, adapter.n_layers, "n_layers"),
            (d_mlp, adapter.d_mlp, "d_mlp"),
        ):
            if given is not None and given != actual:
                raise LapeError(
                    f"{name}={given} was given, but the model has {name}={actual}; pass "
                    f"model= or {name}=, not both"
                )
        n_layers, d_mlp = adapter.n_layers, adapter.d_mlp
    advice = (
        "expected a torch.save-d List[List[LongTensor]] indexed neurons[language][layer], "
        "as released with the LAPE paper"
    )
    _check_zip_crcs(p, advice)
    try:
        data = torch.load(p, weights_only=True, map_location="cpu")
    except Exception as err:  # a damaged file makes the unpickler raise almost anything
        reason = " ".join(f"{type(err).__name__}: {err}".split())[:200]
        raise LapeError(
            f"cannot read {str(p)!r} as a neuron file (corrupted, truncated or not a torch "
            f"file?): {reason}; {advice}"
        ) from None
    if not isinstance(data, (list, tuple)) or not data:
        raise LapeError(f"{str(p)!r} holds a {type(data).__name__}, not a list; {advice}")
    if len(data) != len(langs):
        raise LapeError(
            f"{str(p)!r} holds {len(data)} languages but languages names {len(langs)}: "
            f"{langs!r}; pass exactly one code per entry, in the file's order"
        )
    layer_counts = {len(x) if isinstance(x, (list, tuple)) else -1 for x in data}
    if len(layer_counts) != 1 or -1 in layer_counts or 0 in layer_counts:
        raise LapeError(
            f"{str(p)!r} must hold, for every language, the same non-zero number of layer "
            f"entries; found layer counts {sorted(layer_counts)}; {advice}"
        )
    file_layers = layer_counts.pop()
    if n_layers is not None and n_layers != file_layers:
        raise LapeError(
            f"{str(p)!r} has {file_layers} layers but n_layers={n_layers} was given; "
            "use the neuron file made for this model"
        )
    tensors: list[list[Tensor]] = []
    max_index = -1
    for k, per_layer in enumerate(data):
        row = []
        for layer, idx in enumerate(per_layer):
            if not isinstance(idx, Tensor) or idx.is_floating_point() or idx.is_complex():
                got = idx.dtype if isinstance(idx, Tensor) else type(idx).__name__
                raise LapeError(
                    f"{str(p)!r}: entry [{k}][{layer}] ({langs[k]!r}) must be an integer "
                    f"tensor; found {got}; {advice}"
                )
            idx = idx.flatten().to(torch.int64)
            if idx.numel():
                max_index = max(max_index, int(idx.max()))
            row.append(idx)
        tensors.append(row)
    if d_mlp is not None and max_index >= d_mlp:
        raise LapeError(
            f"{str(p)!r} has neuron index {max_index}, which does not fit d_mlp={d_mlp}; "
            "the file was made for a wider model: check the file and d_mlp"
        )
    meta = {"source": str(p), "source_format": "rucaibox"}
    meta.update(dict(metadata or {}))
    return LanguageNeurons(langs, file_layers, d_mlp, tuple(tuple(row) for row in tensors), meta)


def _check_zip_crcs(path: Path, advice: str) -> None:
    """The paper's format has no checksum of its own, but ``torch.save`` writes a zip whose
    entries carry CRC-32s: verify them all, so a flipped bit is refused, not loaded."""
    if not zipfile.is_zipfile(path):
        return  # the legacy (pre-zip) torch format: nothing to verify
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except Exception as err:  # zipfile raises several types for a damaged archive
        reason = " ".join(f"{type(err).__name__}: {err}".split())[:200]
        raise LapeError(
            f"{str(path)!r} is a damaged neuron file (its zip archive: {reason}); {advice}"
        ) from None
    if bad is not None:
        raise LapeError(
            f"{str(path)!r} is damaged: the CRC-32 of its entry {bad!r} differs from the one it "
            f"records; restore it from a copy; {advice}"
        )


def write_rucaibox(
    neurons: LanguageNeurons, path: str | os.PathLike[str], *, overwrite: bool = False
) -> None:
    """Write the LAPE paper's ``.neuron.pth`` format, atomically (``to_rucaibox``)."""
    check_output_file(path, "neuron file", overwrite=overwrite)
    data = [[idx.clone() for idx in per_layer] for per_layer in neurons.neurons]
    with atomic_path(path) as tmp:
        torch.save(data, tmp)
