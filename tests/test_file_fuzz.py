"""Damaged files: every file type tl_lape writes either loads to the same content or raises
``LapeError``, never another exception and never a silent change.

Each test writes one small file of its type, then Hypothesis (seeded: ``derandomize=True``,
a bounded number of examples) damages it: cut at a random length, one to three bits flipped
anywhere, or a byte of its header (the safetensors JSON header, or the JSON document) replaced.
The loader's answer is compared with the original object field by field.
"""

import json
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tl_lape.collection.checkpoint import CollectionCheckpoint
from tl_lape.collection.residual_means import ResidualMeans
from tl_lape.errors import LapeError
from tl_lape.experiments.evaluation import EvaluationReport, PerplexityMatrix
from tl_lape.experiments.reports import write_report
from tl_lape.experiments.steering_study import SteeringStudy
from tl_lape.neurons import LanguageNeurons
from tl_lape.stats import ActivationStats

FUZZ = settings(
    derandomize=True,
    max_examples=120,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    database=None,
)


# ----------------------------------------------------------------------------- the files


def _stats() -> ActivationStats:
    g = torch.Generator().manual_seed(0)
    counts = torch.randint(0, 40, (2, 8, 2), generator=g)
    sums = torch.rand(2, 8, 2, generator=g, dtype=torch.float64) * counts
    return ActivationStats.from_counts(
        counts,
        [40, 50],
        ["en", "fr"],
        activation_sums=sums,
        metadata={"model_name": "tiny", "dtype": "float32", "n_windows": {"en": 3, "fr": 4}},
    )


def _neurons() -> LanguageNeurons:
    return LanguageNeurons.from_indices(
        {"en": {0: [1, 5], 1: [2]}, "fr": {1: [3, 7]}},
        n_layers=2,
        d_mlp=8,
        metadata={"method": "lape", "top_rate": 0.1},
    )


def _checkpoint() -> CollectionCheckpoint:
    g = torch.Generator().manual_seed(1)
    return CollectionCheckpoint(
        fingerprint={"model": {"name": "tiny", "d_mlp": 8}, "languages": ["en", "fr"]},
        next_batch=3,
        tokens_sha256="ab" * 32,
        finished=False,
        n_tokens=torch.tensor([30, 20]),
        n_windows=torch.tensor([2, 1]),
        active_counts=torch.randint(0, 20, (2, 8, 2), generator=g),
        activation_sums=torch.rand(2, 8, 2, generator=g, dtype=torch.float64),
    )


def _means() -> ResidualMeans:
    g = torch.Generator().manual_seed(2)
    return ResidualMeans(
        ("en", "fr"),
        torch.rand(2, 4, 2, generator=g, dtype=torch.float64),
        torch.tensor([30, 20]),
        {"model_name": "tiny"},
    )


def _study() -> SteeringStudy:
    def row(phase: str, method: str, success: float | None) -> dict[str, Any]:
        return {
            "phase": phase,
            "setting": "english",
            "config": method,
            "method": method,
            "mode": "add",
            "strength": 2.0,
            "top_rate": 0.1,
            "deactivate": "none",
            "layer": -1,
            "seed": 0,
            "target": "fr",
            "n": 4,
            "target_rate": success,
            "lingua_rate": success,
            "agreement": 1.0,
            "fluent_rate": 1.0,
            "success_rate": success,
            "mean_nll": 2.5,
            "mean_repetition": 0.1,
        }

    return SteeringStudy(
        rows=(row("dev", "lape", 0.5), row("fresh", "lape", 0.75), row("fresh", "none", None)),
        chosen={
            "lape": {
                "label": "lape",
                "score": [1, 0.5],
                "method": "lape",
                "mode": "add",
                "strength": 2.0,
                "top_rate": 0.1,
                "deactivate": "none",
                "layer": -1,
                "seed": 0,
            }
        },
        examples={"english|lape|fr": [{"rule": "first", "text": "Bonjour « é »"}]},
        throughput={"unsteered_tok_s": 10.5, "steered_tok_s": 9.0, "ratio": 0.857},
        metadata={"languages": ["en", "fr"], "seed": 3},
    )


def _write_study(path: Path) -> None:
    """The study.json of a report folder written by SteeringStudy.save, moved to ``path``."""
    (_study().save(path.parent / "report") / "study.json").rename(path)


def _evaluation() -> EvaluationReport:
    """Two languages, two windows each (the second language's from one document), LAPE and
    two random draws, per-window data kept."""

    def matrix(shift: float) -> PerplexityMatrix:
        sums = torch.tensor(
            [[[4.0, 6.0], [5.0, 5.5]], [[6.0, 7.0], [5.5, 6.0]], [[4.5, 6.5], [7.5, 8.0]]],
            dtype=torch.float64,
        )
        sums[1:] += shift
        tokens = torch.tensor([[2, 3], [2, 2]])
        return PerplexityMatrix(
            ("en", "fr"),
            ("en", "fr"),
            sums.sum(dim=2) / tokens.sum(dim=1),
            tokens.sum(dim=1),
            {"seq_len": 4},
            window_sums=sums,
            window_tokens=tokens,
            window_clusters=torch.tensor([[0, 1], [0, 0]]),
            cluster_units=("document", "document"),
        )

    return EvaluationReport(
        matrix(0.0),
        (matrix(0.25), matrix(-0.125)),
        neuron_counts={"lape": {"en": 3, "fr": 2}},
        metadata={"model": "tiny"},
        n_boot=50,
        seed=1,
    )


def _write_evaluation(path: Path) -> None:
    """The evaluation.json of a report folder written by write_report, moved to ``path``."""
    write_report(_evaluation(), path.parent / "report", "evaluation", markdown=False)
    (path.parent / "report" / "evaluation.json").rename(path)


def _same_evaluation(a: EvaluationReport, b: EvaluationReport) -> bool:
    return json.dumps(a.to_dict()) == json.dumps(b.to_dict())


def _same_stats(a: ActivationStats, b: ActivationStats) -> bool:
    return (
        a.languages == b.languages
        and all(
            x.dtype == y.dtype and torch.equal(x, y)
            for x, y in (
                (a.n_tokens, b.n_tokens),
                (a.active_counts, b.active_counts),
                (a.activation_sums, b.activation_sums),
            )
        )
        and a.metadata == b.metadata
    )


def _same_neurons(a: LanguageNeurons, b: LanguageNeurons) -> bool:
    return a == b and a.d_mlp == b.d_mlp and a.metadata == b.metadata


def _same_checkpoint(a: CollectionCheckpoint, b: CollectionCheckpoint) -> bool:
    tensors = ("n_tokens", "n_windows", "active_counts", "activation_sums")
    return (a.fingerprint, a.next_batch, a.tokens_sha256, a.finished) == (
        b.fingerprint,
        b.next_batch,
        b.tokens_sha256,
        b.finished,
    ) and all(
        getattr(a, t).dtype == getattr(b, t).dtype and torch.equal(getattr(a, t), getattr(b, t))
        for t in tensors
    )


def _same_means(a: ResidualMeans, b: ResidualMeans) -> bool:
    return (
        a.languages == b.languages
        and torch.equal(a.sums, b.sums)
        and a.sums.dtype == b.sums.dtype
        and torch.equal(a.n_tokens, b.n_tokens)
        and a.metadata == b.metadata
    )


#: name -> (file name, write, load, same content)
KINDS: dict[str, tuple[str, Callable[[Path], None], Callable[[Path], Any], Callable[..., bool]]] = {
    "stats": ("s.safetensors", _stats().save, ActivationStats.load, _same_stats),
    "neurons": ("n.json", _neurons().save, LanguageNeurons.load, _same_neurons),
    "rucaibox": (
        "n.neuron.pth",
        _neurons().to_rucaibox,
        lambda p: LanguageNeurons.from_rucaibox(p, ["en", "fr"], d_mlp=8),
        lambda a, b: a == b,
    ),
    "checkpoint": ("c.ckpt", _checkpoint().save, CollectionCheckpoint.load, _same_checkpoint),
    "means": ("m.safetensors", _means().save, ResidualMeans.load, _same_means),
    # a report folder: the file damaged is its study.json
    "study": (
        "study.json",
        _write_study,
        lambda p: SteeringStudy.load(p.parent),
        lambda a, b: a == b,
    ),
    "evaluation": ("evaluation.json", _write_evaluation, EvaluationReport.load, _same_evaluation),
}


def _original(kind: str) -> tuple[bytes, Any]:
    name, write, load, _ = KINDS[kind]
    path = Path(tempfile.mkdtemp()) / name
    write(path)
    return path.read_bytes(), load(path)


ORIGINALS = {kind: _original(kind) for kind in KINDS}


def _header_end(data: bytes) -> int:
    """End of the part of the file a header edit touches: a safetensors file's JSON header, a
    JSON document whole, the first 512 bytes of a zip (its first local header)."""
    if data[:1] == b"{":
        return len(data)
    if data[:2] == b"PK":
        return min(len(data), 512)
    return min(len(data), 8 + int.from_bytes(data[:8], "little"))


@st.composite
def damage(draw: st.DrawFn, data: bytes) -> bytes:
    how = draw(st.sampled_from(["truncate", "flip", "header"]))
    if how == "truncate":
        return data[: draw(st.integers(0, len(data) - 1))]
    out = bytearray(data)
    if how == "flip":
        for _ in range(draw(st.integers(1, 3))):
            i = draw(st.integers(0, len(out) - 1))
            out[i] ^= 1 << draw(st.integers(0, 7))
        return bytes(out)
    end = _header_end(data)
    i = draw(st.integers(0, end - 1))
    out[i] = draw(st.integers(0, 255).filter(lambda b: b != data[i]))
    return bytes(out)


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_damaged_file_loads_the_same_or_is_refused(kind: str) -> None:
    name, _, load, same = KINDS[kind]
    data, original = ORIGINALS[kind]
    folder = Path(tempfile.mkdtemp())
    path = folder / name

    @FUZZ
    @given(damaged=damage(data))
    def check(damaged: bytes) -> None:
        path.write_bytes(damaged)
        try:
            loaded = load(path)
        except LapeError as err:
            assert "\n" not in str(err) and str(path) in str(err), str(err)
            return
        assert same(loaded, original), f"{kind}: a damaged file loaded with other content"

    check()


def test_the_originals_load_the_same() -> None:
    """The oracle itself: each undamaged file loads to content equal to what was written, and
    the files that can carry a checksum carry one."""
    for kind, (name, _, load, same) in KINDS.items():
        data, original = ORIGINALS[kind]
        path = Path(tempfile.mkdtemp()) / name
        path.write_bytes(data)
        assert same(load(path), original), kind
    assert json.loads(ORIGINALS["neurons"][0])["checksum"].startswith("sha256:")
    for kind in ("study", "evaluation"):
        assert json.loads(ORIGINALS[kind][0])["checksum"].startswith("sha256:"), kind
    for kind in ("stats", "checkpoint", "means"):
        assert b'"checksum":"sha256:' in ORIGINALS[kind][0], kind


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda d: d.update(rows={"0": d["rows"][0]}), r"'rows' must be a list of objects"),
        (lambda d: d["rows"][0].pop("setting"), r"row 0 lacks or mistypes \['setting'\]"),
        (lambda d: d["rows"][1].update(success_rate="75%"), r"row 1 .*\['success_rate'\]"),
        (lambda d: d.update(chosen=[]), r"'chosen' has the wrong shape"),
        (lambda d: d.update(throughput={"ratio": "fast"}), r"'throughput' has the wrong shape"),
        (lambda d: d.update(extra=1), r"has the keys \['extra'\], which no tl_lape writes"),
        (lambda d: d.pop("rows"), r"missing \['rows'\]"),
    ],
)
def test_a_study_edited_by_hand_is_refused(tmp_path: Path, edit: Any, message: str) -> None:
    """A study.json without its tags (as written before they existed) is checked field by field;
    with its tags, any edit fails the checksum first."""
    doc = json.loads(ORIGINALS["study"][0])
    for key in ("format", "version", "checksum"):
        doc.pop(key)
    assert SteeringStudy.from_dict(doc) == ORIGINALS["study"][1]  # an untagged file loads
    edit(doc)
    (tmp_path / "study.json").write_text(json.dumps(doc), encoding="utf-8")
    with pytest.raises(LapeError, match=message) as err:
        SteeringStudy.load(tmp_path)
    assert str(tmp_path / "study.json") in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(LapeError, match=message):
        SteeringStudy.from_dict(doc)
    tagged = json.loads(ORIGINALS["study"][0])
    tagged["rows"][0]["n"] = 5
    with pytest.raises(LapeError, match="is damaged: the checksum of its content"):
        SteeringStudy.from_dict(tagged)


def _wide_windows(d: dict[str, Any]) -> None:
    """Many languages, one of them with many windows: a small file that would make a reader
    pad a huge table (the padded cells are checked before anything is allocated)."""
    m, pw = d["lape"], d["lape"]["per_window"]
    n, others = 1 << 18, [f"x{i}" for i in range(600)]
    m["languages"] += others
    m["n_tokens"] = [n] + [0] * (len(m["languages"]) - 1)
    pw["tokens"] = [[1] * n] + [[] for _ in m["languages"][1:]]
    pw["clusters"] = [[0] * n] + [[] for _ in m["languages"][1:]]
    pw["sums"] = [[[0.0] * n] + [[] for _ in m["languages"][1:]] for _ in range(3)]


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda d: d["lape"].update(deactivated="en"), r"deactivated must be a list of strings"),
        (lambda d: d["lape"].update(n_tokens=[5.0, 4]), r"n_tokens must be a list of whole"),
        (lambda d: d["lape"].update(n_tokens=[5]), r"n_tokens must give one count per language"),
        (lambda d: d["lape"]["nll"][0].__setitem__(0, "2.0"), r"nll must be a list of rows"),
        (lambda d: d["lape"]["nll"][0].__setitem__(0, True), r"nll must be a list of rows"),
        (lambda d: d["lape"]["nll"][0].append(1.0), r"all rows of one length"),
        (lambda d: d["lape"].update(metadata="x"), r"metadata must be an object"),
        (lambda d: d["lape"]["per_window"].update(tokens=5), r"per_window\['tokens'\] must be"),
        (
            lambda d: d["lape"]["per_window"]["clusters"][0].__setitem__(0, 0.5),
            r"per_window\['clusters'\]\[0\] must be a list of whole numbers",
        ),
        (_wide_windows, r"per_window's padded cells is \d+, more than the 134217728"),
        (lambda d: d["random"][0].update(languages=["en", "de"]), r"random\[0\] has deactivated"),
        (lambda d: d["bootstrap"].update(n_boot="50"), r"n_boot must be an int from 1 to 100000"),
        (lambda d: d["bootstrap"].update(level=True), r"level must be a number strictly"),
        (lambda d: d["neuron_counts"].update(lape={"en": -1}), r"neuron_counts\['lape'\] must"),
        (lambda d: d.update(random={}), r"random must be a list of matrices"),
        (lambda d: d.update(comment="mine"), r"has the keys \['comment'\], which no tl_lape"),
        (lambda d: d.pop("lape"), r"must be a dict with a 'lape' matrix"),
    ],
)
def test_an_evaluation_edited_by_hand_is_refused(tmp_path: Path, edit: Any, message: str) -> None:
    """An evaluation.json without its tags (as written before they existed, or by json_text) is
    checked field by field before anything is allocated; with its tags, any edit fails the
    checksum first."""
    doc = json.loads(ORIGINALS["evaluation"][0])
    for key in ("format", "version", "checksum"):
        doc.pop(key)
    assert _same_evaluation(EvaluationReport.from_dict(doc), ORIGINALS["evaluation"][1])
    edit(doc)
    path = tmp_path / "evaluation.json"
    path.write_text(json.dumps(doc), encoding="utf-8")
    data = path.read_bytes()
    with pytest.raises(LapeError, match=message) as err:
        EvaluationReport.load(path)
    assert str(err.value).startswith(f"the evaluation file {str(path)!r}: ")
    assert "\n" not in str(err.value) and path.read_bytes() == data
    with pytest.raises(LapeError, match=message):
        EvaluationReport.from_dict(doc)
    tagged = json.loads(ORIGINALS["evaluation"][0])
    tagged["lape"]["n_tokens"][0] += 1
    with pytest.raises(LapeError, match="is damaged: the checksum of its content"):
        EvaluationReport.from_dict(tagged)
