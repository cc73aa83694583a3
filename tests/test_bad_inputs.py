"""Bad input never crashes, never lies, never leaves a report that contradicts itself.

One test per row of the table in ``docs/howto/bad-inputs.md``; :data:`ROWS` holds, per row id,
the fragment of the message that the row promises, and :func:`test_docs_table_matches_rows`
checks that the table and these tests agree. The CLI tests run ``tl_lape.cli.main`` in-process
on tiny local models and assert the message, the exit status and that nothing was written.
"""

import contextlib
import json
import os
import queue
import shutil
import signal
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors import safe_open
from tiny_models import build_toy_model

import tl_lape
from tl_lape.cli import main
from tl_lape.errors import LapeError
from tl_lape.interventions.generation import generate_with_hooks
from tl_lape.interventions.hooks import (
    deactivated,
    deactivation_hooks,
    patching_hooks,
    steering_hooks,
)
from tl_lape.selection import METHODS, identify_language_neurons
from tl_lape.stats import ActivationStats

DOCS = Path(__file__).resolve().parents[1] / "docs" / "howto" / "bad-inputs.md"

#: Row id -> a fragment of the message that row's input gets (quoted in the docs table).
ROWS: dict[str, str] = {
    "steer-nan-strength": "takes finite numbers",
    "hooks-inf-strength": "strength must be a finite number",
    "hooks-fewer-layers": "but the model these hooks run in has n_layers=",
    "hooks-more-layers": "was made from a neuron set with n_layers=",
    "positions-empty-slice": "selects no position of the first forward pass",
    "from-counts-inf": "must be finite counts below 2**62",
    "neurons-repeated-language": '"languages" repeats',
    "neurons-non-ascii-layer": "written in the digits 0-9",
    "languages-empty": "needs at least one comma-separated language code",
    "languages-spaces": "",
    "languages-commas": "has an empty item",
    "stats-checksum": "is damaged: the checksum of its tensors",
    "neurons-checksum": "is damaged: the checksum of its content",
    "identify-both-or-neither": "does not exist",
    "report-interrupted": "interrupted; nothing was written",
    "out-is-directory": "it is a directory",
    "out-not-writable": "no file can be created in the folder",
    "corpus-invalid-utf8": "is not valid utf-8",
    "model-truncated": "is damaged or truncated",
    "device-nonsense": "is not a torch device",
    "device-cuda-missing": "needs CUDA, which is not available",
    "neurons-huge-index": "outside 0..63",
    "neurons-metadata-type": '"metadata" must be an object',
    "ctrl-c": "interrupted; nothing was written",
    "neurons-huge-n-layers": "more than the 4096 this format allows",
    "language-code-path": "never a path",
    "umask-mode": "",
    "seq-len-before-model": "--seq-len must be at least 1",
    "seq-len-huge": "--seq-len must be at most 1,048,576 tokens",
    "resume-before-model": "belongs to another collection run",
    "evaluate-stats-names-neurons": "has no statistics for languages",
    "model-missing-folder": "no such file or folder",
    "top-rate-example": "e.g. 0.01",
    "one-language": "need statistics of at least two languages",
    "short-corpus-advice": "--seq-len on the command line",
    "collect-resume": "",
    "out-is-input": "which writing would destroy",
    "out-inside-model": "lies inside the input model",
    "out-symlink": "it is a symbolic link",
    "out-foreign-file": "a file that tl_lape did not write is there",
    "report-foreign-folder": "it holds files that tl_lape did not write",
    "json-same-meaning-key": "mean the same",
    "json-deep": "more than 64 deep",
    "json-huge-integer": "more than the 24 allowed",
    "neurons-huge-d-mlp": "more than the 1048576 this format allows",
    "stats-header-edit": "the checksum of its header",
    "merge-dtype": "different model dtypes",
    "long-line-corpus": "",
    "collect-disk-full": "the collected counts are kept in the checkpoint",
    "positions-slice-step": "the step must be a positive int",
    "token-ids-vocab": "outside the vocabulary",
    "seed-range": "seed must be an integer between 0 and 2**63 - 1",
    "save-onto-folder": "it is a directory",
    "rucaibox-damaged": "the CRC-32 of its entry",
    "neurons-unknown-field": "which no tl_lape writes",
    "corpus-fifo": "it is a named pipe (FIFO), not a regular file",
    "corpus-folder": "it is a directory",
    "corpus-dangling-link": "which does not exist",
    "corpus-bom": "",
    "out-not-a-regular-file": "not a regular file, which writing would replace",
    "python-m": "",
    "options-only-with": "only apply with",
    "n-boot-huge": "n_boot must be an int from 1 to 100000",
    "language-code-long": "characters)",
    "corpus-text-no-folder": "names no folder",
    "report-json-edited": "is damaged: the checksum of its content",
    "file-of-another-kind": "a JSON document of format tl_lape.LanguageNeurons, not an",
    "api-path-type": "must be given as a path",
    "corpus-token-ids": "pass token ids as torch.as_tensor(ids)",
}


def _rows_in_docs() -> dict[str, str]:
    """Row id -> the 'what it gets' cell of each row of the docs table."""
    rows = {}
    for line in DOCS.read_text(encoding="utf-8").splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 4 and cells[0].startswith("`") and cells[0] != "`id`":
            rows[cells[0].strip("`")] = cells[2]
    return rows


def test_docs_table_matches_rows() -> None:
    documented = _rows_in_docs()
    assert sorted(documented) == sorted(ROWS)
    for row_id, fragment in ROWS.items():
        if fragment:
            assert f"`{fragment}`" in documented[row_id].replace("\\|", "|"), row_id


# ----------------------------------------------------------------------------- fixtures


def _tiny_stats(languages: tuple[str, ...] = ("en", "fr"), seed: int = 0) -> ActivationStats:
    """Statistics of the shape of the tiny test models (2 layers x 64 neurons)."""
    g = torch.Generator().manual_seed(seed)
    n = len(languages)
    counts = torch.randint(0, 50, (2, 64, n), generator=g)
    sums = torch.rand(2, 64, n, generator=g, dtype=torch.float64) * counts
    return ActivationStats.from_counts(
        counts, [50] * n, list(languages), activation_sums=sums, metadata={"gated": True}
    )


@pytest.fixture()
def stats_file(tmp_path: Path) -> Path:
    path = tmp_path / "stats.safetensors"
    _tiny_stats().save(path)
    return path


@pytest.fixture()
def neurons_file(tmp_path: Path) -> Path:
    path = tmp_path / "neurons.json"
    tl_lape.identify_language_neurons(_tiny_stats(), top_rate=0.1).save(path)
    return path


def _listing(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def _fails(argv: list[str], fragment: str, capsys: pytest.CaptureFixture[str]) -> str:
    """Run the CLI; assert exit status 2 and one error line holding ``fragment``."""
    capsys.readouterr()  # drop what fixtures printed (building a tiny model)
    status = main(argv)
    captured = capsys.readouterr()
    assert status == 2, captured
    assert "Traceback" not in captured.err
    # transformers may draw a progress bar while a model loads; the error is the last line
    lines = [line for line in captured.err.splitlines() if line.startswith("tl-lape ")]
    assert len(lines) == 1, captured.err
    assert captured.err.rstrip().endswith(lines[0])
    assert lines[0].startswith(f"tl-lape {argv[0]}: error: "), lines[0]
    assert fragment in lines[0], lines[0]
    return lines[0]


def _write_neurons_doc(path: Path, **fields: object) -> Path:
    doc: dict[str, object] = {
        "format": "tl_lape.LanguageNeurons",
        "version": 1,
        "languages": ["en", "fr"],
        "n_layers": 2,
        "d_mlp": 64,
        "neurons": {"en": {"0": [1, 2]}, "fr": {"1": [3]}},
        "metadata": {},
    }
    doc.update(fields)
    path.write_text(json.dumps(doc), encoding="utf-8")
    return path


# ----------------------------------------------------------------------------- silent wrong results


def test_steer_nan_strength(tiny_model, stats_file: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "steer"
    argv = ["steer", str(stats_file), "--model", str(tiny_model("llama").path)]
    argv += ["--targets", "fr", "--modes", "add", "--strengths", "add=nan", "--top-rates", "0.05"]
    argv += ["--settings", "english", "--max-new-tokens", "4", "--reference-corpus", "none"]
    message = _fails([*argv, "--out", str(out)], ROWS["steer-nan-strength"], capsys)
    assert "'nan'" in message
    assert not out.exists()


def test_hooks_inf_strength() -> None:
    stats = _tiny_stats()
    neurons = tl_lape.identify_language_neurons(stats, top_rate=0.1)
    for bad in (float("inf"), float("nan")):
        with pytest.raises(LapeError, match=ROWS["hooks-inf-strength"]):
            steering_hooks(neurons, stats, "fr", mode="add", strength=bad, gated=True)


def _attached_hooks(model) -> int:
    """Forward hooks attached to ``model`` (hook_dict may list a hook point under two names)."""
    points = {id(hp): hp for hp in model.hook_dict.values()}
    return sum(len(hp.fwd_hooks) for hp in points.values())


def _set_of(n_layers: int, layers: range, d_mlp: int = 64) -> tl_lape.LanguageNeurons:
    """A neuron set of ``n_layers`` with French neurons on ``layers``."""
    fr = {layer: [3, 5] for layer in layers}
    return tl_lape.LanguageNeurons.from_indices({"fr": fr}, n_layers=n_layers, d_mlp=d_mlp)


def test_hooks_fewer_layers(tiny_model, monkeypatch: pytest.MonkeyPatch) -> None:
    bridge = tiny_model("llama").bridge  # 2 layers, d_mlp 64
    tokens = bridge.to_tokens("The cat sat on the warm mat.")
    one_layer = _set_of(1, range(1))
    fwd_hooks = [
        deactivation_hooks(one_layer, "fr"),
        patching_hooks(one_layer, "fr", {"blocks.0.mlp.hook_post": torch.zeros(1, 1, 64)}),
    ]
    for hooks in fwd_hooks:  # built without model=: checked when they first fire
        with pytest.raises(LapeError, match=ROWS["hooks-fewer-layers"]) as info:
            bridge.run_with_hooks(tokens, fwd_hooks=hooks)
        assert "n_layers=1, but" in str(info.value)
        assert "has n_layers=2" in str(info.value)
        assert "model=model" in str(info.value)
        assert _attached_hooks(bridge) == 0
    # The issue's case on a HookedRootModule: a 2-layer set on a 4-layer model.
    toy = build_toy_model(n_layers=4, d_mlp=8)
    hooks = deactivation_hooks(_set_of(2, range(2), d_mlp=8), "fr")
    with pytest.raises(LapeError, match=ROWS["hooks-fewer-layers"]) as info:
        toy.run_with_hooks(torch.tensor([[1, 2, 3]]), fwd_hooks=hooks)
    assert "n_layers=2, but the model these hooks run in has n_layers=4" in str(info.value)
    # A set that fits is looked up once, on its first pass, and then costs nothing.
    from tl_lape.interventions import hooks as hooks_module

    calls = []
    real = hooks_module._running_model
    monkeypatch.setattr(
        hooks_module, "_running_model", lambda point: calls.append(point) or real(point)
    )
    fits = deactivation_hooks(_set_of(2, range(2)), "fr")
    clean = bridge(tokens)
    first = bridge.run_with_hooks(tokens, fwd_hooks=fits)
    second = bridge.run_with_hooks(tokens, fwd_hooks=fits)
    assert len(calls) == 1
    assert torch.equal(first, second) and not torch.equal(first, clean)


def test_hooks_more_layers(tiny_model) -> None:
    bridge = tiny_model("llama").bridge  # 2 layers
    tokens = bridge.to_tokens("The cat sat on the warm mat.")
    four_layers = _set_of(4, range(4))
    hooks = deactivation_hooks(four_layers, "fr")
    # The helpers check the hooks before attaching them: a LapeError, not a KeyError.
    with pytest.raises(LapeError, match=ROWS["hooks-more-layers"]) as info:
        generate_with_hooks(bridge, ["The cat"], fwd_hooks=hooks, max_new_tokens=2)
    assert "n_layers=4, but the model has n_layers=2" in str(info.value)
    with pytest.raises(LapeError, match=ROWS["hooks-more-layers"]):
        tl_lape.judging.nll.window_nll(bridge, tokens, fwd_hooks=hooks)
    with pytest.raises(LapeError, match="n_layers=4, but the model has n_layers=2"):
        deactivated(bridge, four_layers, "fr").__enter__()
    assert _attached_hooks(bridge) == 0
    # A bare model.hooks(...) attaches hooks by name: TransformerLens' KeyError for the first
    # layer the model lacks (documented), and nothing is left attached ...
    with pytest.raises(KeyError, match=r"blocks\.2\.mlp\.hook_post"), bridge.hooks(fwd_hooks=hooks):
        pass
    assert _attached_hooks(bridge) == 0
    # ... unless the set has no neurons there: then the hooks catch it when they fire.
    early_only = deactivation_hooks(_set_of(4, range(2)), "fr")
    with pytest.raises(LapeError, match="but the model these hooks run in has n_layers=2"):
        bridge.run_with_hooks(tokens, fwd_hooks=early_only)
    assert _attached_hooks(bridge) == 0


def test_positions_empty_slice(tiny_model) -> None:
    bridge = tiny_model("llama").bridge
    tokens = bridge.to_tokens("The cat sat on the warm mat.")
    n_pos = tokens.shape[1]
    neurons = _set_of(2, range(2))
    stats = _tiny_stats()
    far = slice(10000, 20000)
    for hooks in (
        deactivation_hooks(neurons, "fr", positions=far),
        steering_hooks(neurons, stats, "fr", mode="add", strength=2.0, positions=far, gated=True),
    ):
        with pytest.raises(LapeError, match=ROWS["positions-empty-slice"]) as info:
            bridge.run_with_hooks(tokens, fwd_hooks=hooks)
        assert "positions=slice(10000, 20000, None)" in str(info.value)
        assert f"pos={n_pos}" in str(info.value)
        assert _attached_hooks(bridge) == 0
    # A slice starting just past the pass selects the positions a longer re-run adds: accepted.
    from_end = deactivation_hooks(neurons, "fr", positions=slice(n_pos, None))
    assert torch.equal(bridge.run_with_hooks(tokens, fwd_hooks=from_end), bridge(tokens))
    # In generation the prompt is the first pass: checked there too.
    with pytest.raises(LapeError, match=ROWS["positions-empty-slice"]):
        generate_with_hooks(
            bridge, ["The cat"], fwd_hooks=deactivation_hooks(neurons, "fr", positions=far)
        )
    # A slice that selects part of the prompt and nothing of a cached decoding step (one
    # position) is legitimate: generation runs, and the prompt is changed.
    skip_first = deactivation_hooks(neurons, "fr", positions=slice(1, None))
    assert not torch.equal(bridge.run_with_hooks(tokens, fwd_hooks=skip_first), bridge(tokens))
    texts = generate_with_hooks(
        bridge, ["The cat", "Le chat dort"], fwd_hooks=skip_first, max_new_tokens=4, batch_size=1
    )
    assert len(texts) == 2 and all(isinstance(t, str) for t in texts)
    with deactivated(bridge, neurons, "fr", positions=slice(1, None)):
        out = bridge.generate(
            "The cat", max_new_tokens=3, use_past_kv_cache=True, verbose=False, do_sample=False
        )
    assert isinstance(out, str)
    assert _attached_hooks(bridge) == 0


@pytest.mark.parametrize("bad", [float("inf"), 1e30])
def test_from_counts_inf(bad: float) -> None:
    with pytest.raises(LapeError, match=r"n_tokens must be finite counts below 2\*\*62"):
        ActivationStats.from_counts(torch.ones(1, 2, 2), torch.tensor([bad, 5.0]), ["en", "fr"])
    with pytest.raises(LapeError, match=r"active_counts must be finite counts below 2\*\*62"):
        ActivationStats.from_counts(torch.full((1, 2, 1), bad), [5], ["en"])


def test_neurons_repeated_language(tmp_path: Path) -> None:
    path = _write_neurons_doc(tmp_path / "n.json", languages=["en", "fr", "en"])
    with pytest.raises(LapeError, match=ROWS["neurons-repeated-language"]) as info:
        tl_lape.LanguageNeurons.load(path)
    assert str(path) in str(info.value)
    repeated_key = tmp_path / "k.json"
    text = _write_neurons_doc(tmp_path / "k.json").read_text(encoding="utf-8")
    repeated_key.write_text(
        text.replace('"fr": {"1": [3]}', '"fr": {"1": [3]}, "en": {"1": [9]}'), encoding="utf-8"
    )
    with pytest.raises(LapeError, match="the key 'en' appears twice"):
        tl_lape.LanguageNeurons.load(repeated_key)


def test_neurons_non_ascii_layer(tmp_path: Path) -> None:
    path = _write_neurons_doc(tmp_path / "n.json", neurons={"en": {"١": [1]}, "fr": {}})
    with pytest.raises(LapeError, match=ROWS["neurons-non-ascii-layer"]) as info:
        tl_lape.LanguageNeurons.load(path)
    assert "'١'" in str(info.value)


@pytest.mark.parametrize(
    ("value", "row"),
    [("", "languages-empty"), (",,", "languages-empty"), ("en,,fr", "languages-commas")],
)
def test_languages_parsing_errors(
    text_corpus: Path, tmp_path: Path, capsys, value: str, row: str
) -> None:
    out = tmp_path / "stats.safetensors"
    argv = ["collect", "--model", "no-such-model", "--corpus", f"text:{text_corpus}"]
    message = _fails([*argv, "--languages", value, "--out", str(out)], ROWS[row], capsys)
    assert repr(value) in message
    assert not out.exists()


def test_languages_with_spaces(tiny_model, text_corpus: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "stats.safetensors"
    argv = ["collect", "--model", str(tiny_model("llama").path), "--corpus", f"text:{text_corpus}"]
    argv += ["--languages", "en, fr", "--seq-len", "16", "--batch-size", "2", "--no-progress"]
    assert main([*argv, "--out", str(out)]) == 0
    assert ActivationStats.load(out).languages == ("en", "fr")


def _flip_low_bit(path: Path, tensor: str) -> None:
    """Flip the lowest bit of the first byte of ``tensor``'s data in a safetensors file."""
    data = bytearray(path.read_bytes())
    header_len = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + header_len])
    start = 8 + header_len + header[tensor]["data_offsets"][0]
    data[start] ^= 1
    path.write_bytes(bytes(data))


def test_stats_checksum(stats_file: Path, tmp_path: Path, capsys) -> None:
    before = ActivationStats.load(stats_file)
    _flip_low_bit(stats_file, "activation_sums")
    with pytest.raises(LapeError, match=ROWS["stats-checksum"]) as info:
        ActivationStats.load(stats_file)
    assert str(stats_file) in str(info.value)
    out = tmp_path / "neurons.json"
    message = _fails(["identify", str(stats_file), "--out", str(out)], "is damaged", capsys)
    assert str(stats_file) in message
    assert not out.exists()
    # A file written before the checksum existed still loads.
    old = tmp_path / "old.safetensors"
    with safe_open(str(stats_file), framework="pt") as f:
        header = {k: v for k, v in (f.metadata() or {}).items() if k != "checksum"}
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    from safetensors.torch import save_file

    save_file(tensors, str(old), metadata=header)
    assert ActivationStats.load(old).languages == before.languages


def test_neurons_checksum(neurons_file: Path, tmp_path: Path) -> None:
    doc = json.loads(neurons_file.read_text(encoding="utf-8"))
    assert doc["checksum"].startswith("sha256:")
    indices = next(iter(doc["neurons"]["fr"].values()))
    text = neurons_file.read_text(encoding="utf-8")
    old, new = json.dumps(indices), json.dumps([indices[0] ^ 1, *indices[1:]])
    assert old != new and text.count(old) == 1
    neurons_file.write_text(text.replace(old, new), encoding="utf-8")
    with pytest.raises(LapeError, match=ROWS["neurons-checksum"]) as info:
        tl_lape.LanguageNeurons.load(neurons_file)
    assert str(neurons_file) in str(info.value)
    # Without a checksum (files written before it existed) the same content loads.
    del doc["checksum"]
    old_file = tmp_path / "old.json"
    old_file.write_text(json.dumps(doc), encoding="utf-8")
    assert tl_lape.LanguageNeurons.load(old_file).n_layers == 2


# ----------------------------------------------------------------------------- half-written output


def test_identify_both_or_neither(stats_file: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "f.json"
    argv = ["identify", str(stats_file), "--out", str(out), "--rucaibox", "/nodir/x.pth"]
    message = _fails(argv, ROWS["identify-both-or-neither"], capsys)
    assert "/nodir" in message
    assert not out.exists()
    assert _listing(tmp_path) == ["stats.safetensors"]


@contextlib.contextmanager
def _python_ctrl_c() -> Iterator[None]:
    """For the block, SIGINT raises KeyboardInterrupt here, whatever the runner set.

    A parent that ignores SIGINT (CI runners, nohup) passes SIG_IGN on, and Python then installs
    no handler; a blocked SIGINT would never arrive. Both are set explicitly, and restored.
    """
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    blocked = signal.pthread_sigmask(signal.SIG_UNBLOCK, [signal.SIGINT])
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
        signal.signal(signal.SIGINT, previous)


def _wait_for_the_signal(timeout: float = 60.0) -> None:
    """Let a pending signal's handler run (it raises); give up after a generous ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        time.sleep(0.01)  # the handler runs between these bytecodes, at the latest


def test_report_interrupted_leaves_the_old_report(tmp_path: Path) -> None:
    from tl_lape.formats import atomic_dir

    target = tmp_path / "report"
    target.mkdir()
    (target / "summary.md").write_text("old: 154 neurons", encoding="utf-8")
    with _python_ctrl_c(), pytest.raises(KeyboardInterrupt), atomic_dir(target) as tmp:
        (tmp / "stats.safetensors").write_bytes(b"new")
        (tmp / "neurons.json").write_text("{}", encoding="utf-8")
        os.kill(os.getpid(), signal.SIGINT)  # a real Ctrl-C, delivered to this process
        _wait_for_the_signal()
    assert _listing(target) == ["summary.md"]
    assert (target / "summary.md").read_text(encoding="utf-8") == "old: 154 neurons"
    assert _listing(tmp_path) == ["report", "report/summary.md"]
    with atomic_dir(target) as tmp:
        (tmp / "summary.md").write_text("new", encoding="utf-8")
        (tmp / "neurons.json").write_text("{}", encoding="utf-8")
    assert _listing(tmp_path) == [
        "report",
        "report/.tl_lape",  # the mark of a folder tl_lape wrote (formats.FOLDER_MARK)
        "report/neurons.json",
        "report/summary.md",
    ]
    assert (target / "summary.md").read_text(encoding="utf-8") == "new"


@pytest.mark.parametrize("command", ["collect", "identify", "evaluate"])
def test_out_is_directory(
    command: str, stats_file: Path, neurons_file: Path, text_corpus: Path, tmp_path: Path, capsys
) -> None:
    out = tmp_path / "existing"
    out.mkdir()
    (out / "keep.txt").write_text("x", encoding="utf-8")
    corpus = ["--corpus", f"text:{text_corpus}", "--languages", "en,fr"]
    argv = {
        "collect": ["collect", "--model", "no-such-model", *corpus, "--out", str(out)],
        "identify": ["identify", str(stats_file), "--out", str(out)],
        # evaluate's --out is a folder: a file in its place is refused
        "evaluate": ["evaluate", str(neurons_file), "--model", "no-such-model", *corpus],
    }[command]
    if command == "evaluate":
        argv += ["--out", str(out / "keep.txt")]
        _fails(argv, "it is a file", capsys)
    else:
        _fails(argv, ROWS["out-is-directory"], capsys)
    assert _listing(out) == ["keep.txt"]


@pytest.mark.parametrize("command", ["collect", "evaluate"])
def test_out_not_writable(
    command: str, neurons_file: Path, text_corpus: Path, tmp_path: Path, capsys
) -> None:
    # /proc refuses new files even to root, whatever its permission bits say.
    corpus = ["--corpus", f"text:{text_corpus}", "--languages", "en,fr"]
    argv = {
        "collect": ["collect", "--model", "no-such-model", *corpus],
        "evaluate": ["evaluate", str(neurons_file), "--model", "no-such-model", *corpus],
    }[command]
    if not Path("/proc").is_dir():
        pytest.skip("needs /proc")
    _fails([*argv, "--out", "/proc/x"], ROWS["out-not-writable"], capsys)
    missing = tmp_path / "no" / "such" / "folder"
    if command == "collect":  # a file's folder must exist (a report folder is created)
        _fails([*argv, "--out", str(missing / "x.safetensors")], "does not exist", capsys)
    assert not (tmp_path / "no").exists()


# ----------------------------------------------------------------------------- one-line errors


def test_corpus_invalid_utf8(text_corpus: Path, tmp_path: Path, capsys) -> None:
    (text_corpus / "fr.txt").write_bytes(b"bonjour\nle caf\xe9\n")
    out = tmp_path / "stats.safetensors"
    argv = ["collect", "--model", "no-such-model", "--corpus", f"text:{text_corpus}"]
    message = _fails(
        [*argv, "--languages", "en,fr", "--out", str(out)], ROWS["corpus-invalid-utf8"], capsys
    )
    assert "fr.txt" in message and "line 2" in message
    assert not out.exists()


def test_model_truncated(tiny_model, text_corpus: Path, tmp_path: Path, capsys) -> None:
    model_dir = tmp_path / "model"
    shutil.copytree(tiny_model("llama").path, model_dir)
    weights = model_dir / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-1000])
    out = tmp_path / "stats.safetensors"
    argv = ["collect", "--model", str(model_dir), "--corpus", f"text:{text_corpus}"]
    message = _fails([*argv, "--out", str(out)], ROWS["model-truncated"], capsys)
    assert "model.safetensors" in message
    assert not out.exists()


@pytest.mark.parametrize("command", ["collect", "demo"])
def test_device_nonsense(command: str, text_corpus: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "out"
    argv = {
        "collect": ["collect", "--model", "demo", "--corpus", f"text:{text_corpus}"],
        "demo": ["demo", "--model", "demo"],
    }[command]
    message = _fails(
        [*argv, "--device", "nonsense", "--out", str(out)], ROWS["device-nonsense"], capsys
    )
    assert "'nonsense'" in message
    assert not out.exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_device_cuda_missing(text_corpus: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "stats.safetensors"
    argv = ["collect", "--model", "demo", "--corpus", f"text:{text_corpus}", "--device", "cuda"]
    _fails([*argv, "--out", str(out)], ROWS["device-cuda-missing"], capsys)
    assert not out.exists()


def test_neurons_huge_index(text_corpus: Path, tmp_path: Path, capsys) -> None:
    path = _write_neurons_doc(tmp_path / "n.json", neurons={"en": {"0": [10**20]}})
    out = tmp_path / "report"
    argv = ["evaluate", str(path), "--model", "no-such-model", "--corpus", f"text:{text_corpus}"]
    message = _fails([*argv, "--out", str(out)], ROWS["neurons-huge-index"], capsys)
    assert str(10**20) in message and str(path) in message
    assert not out.exists()


@pytest.mark.parametrize("metadata", [[1, 2], "a string"])
def test_neurons_metadata_type(tmp_path: Path, metadata: object) -> None:
    path = _write_neurons_doc(tmp_path / "n.json", metadata=metadata)
    with pytest.raises(LapeError, match=ROWS["neurons-metadata-type"]) as info:
        tl_lape.LanguageNeurons.load(path)
    assert type(metadata).__name__ in str(info.value)


def _read_lines(stream: Any, lines: "queue.Queue[str | None]") -> None:
    for line in stream:
        lines.put(line)
    lines.put(None)


def _read_all(stream: Any, into: list[str]) -> None:
    into.append(stream.read())


def test_ctrl_c(handbook_cache: Path, tmp_path: Path) -> None:
    """A real SIGINT during `tl-lape demo` over an earlier report: one line, 130, nothing new."""
    out = tmp_path / "report"
    out.mkdir()
    (out / "summary.md").write_text("an earlier report", encoding="utf-8")
    (out / ".tl_lape").write_text("", encoding="utf-8")  # the mark of a folder tl_lape wrote
    env = {**os.environ, "TL_LAPE_CACHE": str(handbook_cache), "OMP_NUM_THREADS": "1"}
    # The child sets its own SIGINT handler (and unblocks SIGINT) before running the CLI, so a
    # parent that ignores or blocks SIGINT (CI runners, nohup) does not change the result; its
    # own session keeps a Ctrl-C typed at this test run away from it.
    child = (
        "import runpy, signal, sys; "
        "signal.pthread_sigmask(signal.SIG_UNBLOCK, [signal.SIGINT]); "
        "signal.signal(signal.SIGINT, signal.default_int_handler); "
        "runpy.run_module('tl_lape.cli', run_name='__main__', alter_sys=True)"
    )
    argv = [sys.executable, "-c", child, "demo", "--model", "demo", "--out", str(out)]
    argv += ["--no-progress"]
    argv += ["--max-tokens-per-language", "1000000", "--seq-len", "64"]
    proc = subprocess.Popen(
        argv,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        start_new_session=True,
    )
    try:
        # Wait (generously) for the line that starts the collection step, then press Ctrl-C:
        # from that line on the program is inside the step, whatever the machine's load.
        lines: queue.Queue[str | None] = queue.Queue()
        errors: list[str] = []
        readers = [
            threading.Thread(target=_read_lines, args=(proc.stdout, lines), daemon=True),
            threading.Thread(target=_read_all, args=(proc.stderr, errors), daemon=True),
        ]
        for reader in readers:
            reader.start()
        deadline = time.monotonic() + 600
        while True:
            line = lines.get(timeout=max(0.0, deadline - time.monotonic()))
            assert line is not None, "the demo ended before its collection step"
            if line.startswith("[3/"):
                break
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    for reader in readers:
        reader.join(timeout=60)  # the pipes close when the child ends
    err = "".join(errors)
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    # (transformers draws a progress bar on stderr while the demo model loads)
    assert [line for line in err.splitlines() if line.startswith("tl-lape")] == [
        f"tl-lape demo: {ROWS['ctrl-c']}"
    ]
    assert err.rstrip().endswith(ROWS["ctrl-c"])
    assert _listing(tmp_path) == ["report", "report/.tl_lape", "report/summary.md"]
    assert (out / "summary.md").read_text(encoding="utf-8") == "an earlier report"


# ----------------------------------------------------------------------------- resources and paths


def test_neurons_huge_n_layers(tmp_path: Path) -> None:
    path = _write_neurons_doc(tmp_path / "n.json", n_layers=1_000_000, neurons={})
    assert path.stat().st_size < 250
    started = time.perf_counter()
    with pytest.raises(LapeError, match=ROWS["neurons-huge-n-layers"]):
        tl_lape.LanguageNeurons.load(path)
    assert time.perf_counter() - started < 1.0


def test_language_code_path(tiny_model, tmp_path: Path, capsys) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("not for tl_lape", encoding="utf-8")
    corpus = tmp_path / "a" / "b"
    corpus.mkdir(parents=True)
    evil = ("en", "../../secret")
    neurons = _write_neurons_doc(tmp_path / "n.json", languages=list(evil), neurons={})
    with pytest.raises(LapeError, match=ROWS["language-code-path"]):
        tl_lape.LanguageNeurons.load(neurons)
    # A statistics file naming such a language is refused too (written with a valid name, then
    # its header edited: the constructor would accept any non-empty string).
    stats_path = tmp_path / "stats.safetensors"
    _tiny_stats(("en", "xx")).save(stats_path)
    with safe_open(str(stats_path), framework="pt") as f:
        header = dict(f.metadata() or {})
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    header["languages"] = json.dumps(list(evil))
    del header["header_checksum"]  # as in a file written before the header had a checksum
    from safetensors.torch import save_file

    save_file(tensors, str(stats_path), metadata=header)
    out = tmp_path / "steer"
    argv = ["steer", str(stats_path), "--model", str(tiny_model("llama").path)]
    argv += ["--reference-corpus", f"text:{corpus}", "--out", str(out)]
    message = _fails(argv, ROWS["language-code-path"], capsys)
    assert "../../secret" in message
    assert not out.exists()


def test_umask_mode(stats_file: Path, tmp_path: Path) -> None:
    previous = os.umask(0o022)
    try:
        out = tmp_path / "n.json"
        pth = tmp_path / "n.pth"
        assert main(["identify", str(stats_file), "--out", str(out), "--rucaibox", str(pth)]) == 0
        fresh = tmp_path / "fresh.safetensors"
        _tiny_stats().save(fresh)
        for path in (out, pth, fresh):
            assert stat.S_IMODE(path.stat().st_mode) == 0o644, path
        from tl_lape.formats import atomic_dir

        with atomic_dir(tmp_path / "report") as tmp:
            (tmp / "x.md").write_text("x", encoding="utf-8")
        assert stat.S_IMODE((tmp_path / "report").stat().st_mode) == 0o755
    finally:
        os.umask(previous)


# ----------------------------------------------------------------------------- early, right blame


@pytest.mark.parametrize(
    "option", [("--seq-len", "0"), ("--batch-size", "0"), ("--max-tokens-per-language", "0")]
)
def test_seq_len_before_model(
    option: tuple[str, str], text_corpus: Path, tmp_path: Path, capsys
) -> None:
    # The model name does not exist: an error about it would mean the model was tried first.
    out = tmp_path / "stats.safetensors"
    argv = ["collect", "--model", "no-such-model", "--corpus", f"text:{text_corpus}"]
    message = _fails([*argv, *option, "--out", str(out)], f"{option[0]} must be at least 1", capsys)
    assert "got 0" in message
    assert not out.exists()


def test_seq_len_huge(text_corpus: Path, tmp_path: Path, capsys) -> None:
    """A window longer than tl_lape's stated bound is refused before the model is looked up
    (it used to be refused only once the model had loaded, by its context length); the API's
    window settings use the same check."""
    out = tmp_path / "stats.safetensors"
    argv = ["collect", "--model", "no-such-model", "--corpus", f"text:{text_corpus}"]
    message = _fails(
        [*argv, "--seq-len", str(10**12), "--out", str(out)], ROWS["seq-len-huge"], capsys
    )
    assert "received 1,000,000,000,000" in message and not out.exists()
    from tl_lape.collection.windows import MAX_SEQ_LEN, WindowSettings

    with pytest.raises(LapeError, match="seq_len must be at most 1,048,576"):
        WindowSettings(MAX_SEQ_LEN + 1, 1, None, True, True)
    assert WindowSettings(MAX_SEQ_LEN, 1, None, True, True).seq_len == MAX_SEQ_LEN


def test_evaluate_stats_names_neurons(
    neurons_file: Path, text_corpus: Path, tmp_path: Path, capsys
) -> None:
    other = tmp_path / "s2.safetensors"
    _tiny_stats(("en", "zh")).save(other)
    out = tmp_path / "report"
    argv = ["evaluate", str(neurons_file), "--stats", str(other), "--model", "no-such-model"]
    argv += ["--corpus", f"text:{text_corpus}", "--out", str(out)]
    message = _fails(argv, ROWS["evaluate-stats-names-neurons"], capsys)
    assert str(neurons_file) in message and "['fr']" in message
    assert not out.exists()


def test_model_missing_folder(text_corpus: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "stats.safetensors"
    missing = tmp_path / "no" / "model"
    argv = ["collect", "--model", str(missing), "--corpus", f"text:{text_corpus}"]
    message = _fails([*argv, "--out", str(out)], ROWS["model-missing-folder"], capsys)
    assert str(missing) in message and "Repo id" not in message
    assert not out.exists()


def test_top_rate_example(stats_file: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "n.json"
    message = _fails(
        ["identify", str(stats_file), "--top-rate", "1.5", "--out", str(out)],
        ROWS["top-rate-example"],
        capsys,
    )
    assert "0.95" not in message
    assert not out.exists()


def test_one_language(tmp_path: Path, capsys) -> None:
    """LAPE over one language would return a set chosen by index order: refused instead."""
    stats = tmp_path / "one.safetensors"
    _tiny_stats(("en",)).save(stats)
    out = tmp_path / "n.json"
    _fails(["identify", str(stats), "--out", str(out)], ROWS["one-language"], capsys)
    assert not out.exists()
    for method in METHODS:
        with pytest.raises(LapeError, match="at least two languages"):
            identify_language_neurons(_tiny_stats(("en",)), method=method)


def test_short_corpus_advice(tiny_model, tmp_path: Path, capsys) -> None:
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "en.txt").write_text("a", encoding="utf-8")
    out = tmp_path / "stats.safetensors"
    argv = ["collect", "--model", str(tiny_model("llama").path), "--corpus", f"text:{corpus}"]
    argv += ["--languages", "en", "--seq-len", "16", "--no-progress", "--out", str(out)]
    message = _fails(argv, ROWS["short-corpus-advice"], capsys)
    assert "pass drop_last=False" not in message
    assert not out.exists()


# ----------------------------------------------------------------------------- resume


def test_collect_resume(tiny_model, text_corpus: Path, tmp_path: Path, capsys) -> None:
    model = str(tiny_model("llama").path)
    argv = ["collect", "--model", model, "--corpus", f"text:{text_corpus}", "--languages", "en,fr"]
    argv += ["--seq-len", "16", "--batch-size", "2", "--no-progress"]
    plain, resumed = tmp_path / "plain.safetensors", tmp_path / "resumed.safetensors"
    checkpoint = tmp_path / "run.ckpt"
    assert main([*argv, "--out", str(plain)]) == 0
    resume = ["--resume", str(checkpoint), "--checkpoint-every", "1"]
    assert main([*argv, *resume, "--out", str(resumed)]) == 0
    assert checkpoint.is_file()
    a, b = ActivationStats.load(plain), ActivationStats.load(resumed)
    assert torch.equal(a.active_counts, b.active_counts)
    assert torch.equal(a.activation_sums, b.activation_sums)
    assert torch.equal(a.n_tokens, b.n_tokens)
    # Run again: the finished checkpoint gives the same statistics.
    resumed.unlink()
    assert main([*argv, *resume, "--out", str(resumed)]) == 0
    assert torch.equal(ActivationStats.load(resumed).active_counts, a.active_counts)
    capsys.readouterr()
    _fails(
        [*argv, "--resume", str(tmp_path), "--out", str(tmp_path / "x")],
        "it is a directory",
        capsys,
    )


def test_resume_before_model(
    tiny_model, neurons_file: Path, text_corpus: Path, tmp_path: Path, capsys, monkeypatch
) -> None:
    """An existing --resume file is read, and its languages and window options compared, before
    the model loads (it used to be read after, 8.5 s on the probe's machine)."""
    model = str(tiny_model("llama").path)
    head = ["collect", "--model", model, "--corpus", f"text:{text_corpus}", "--no-progress"]
    argv = [*head, "--languages", "en,fr", "--seq-len", "16", "--batch-size", "2"]
    checkpoint = tmp_path / "run.ckpt"
    resume = ["--resume", str(checkpoint), "--checkpoint-every", "1"]
    assert main([*argv, *resume, "--out", str(tmp_path / "first.safetensors")]) == 0

    def no_model(*args, **kwargs):
        raise AssertionError("the model was loaded before --resume was checked")

    monkeypatch.setattr("tl_lape.cli._load_model", no_model)
    before = _bytes_of([checkpoint, neurons_file])
    out = tmp_path / "out.safetensors"
    other = [*head, "--languages", "en,fr", "--seq-len", "8", "--batch-size", "2"]
    message = _fails([*other, *resume, "--out", str(out)], ROWS["resume-before-model"], capsys)
    assert "settings.seq_len: 16 in the checkpoint, 8 now" in message
    other = [*head, "--languages", "fr,en", "--seq-len", "16", "--batch-size", "2"]
    message = _fails([*other, *resume, "--out", str(out)], ROWS["resume-before-model"], capsys)
    assert "corpus.languages" in message
    _fails([*argv, "--resume", str(neurons_file), "--out", str(out)], "not a collection", capsys)
    assert _bytes_of([checkpoint, neurons_file]) == before and not out.exists()


# ----------------------------------------------------------------------------- the output rule


def _bytes_of(paths: list[Path]) -> dict[Path, bytes]:
    return {p: p.read_bytes() for p in paths}


@pytest.mark.parametrize("case", ["same-file", "same-file-resolved", "report-holds-input"])
def test_out_is_input(case: str, stats_file: Path, neurons_file: Path, tmp_path: Path, capsys):
    before = _bytes_of([stats_file, neurons_file])
    if case == "same-file":
        argv = ["identify", str(stats_file), "--out", str(stats_file)]
    elif case == "same-file-resolved":
        (tmp_path / "sub").mkdir()
        argv = ["identify", str(stats_file), "--rucaibox", str(tmp_path / "sub" / ".." / "n.pth")]
        argv += ["--out", str(tmp_path / "sub" / ".." / stats_file.name)]
    else:  # the neuron set lies inside the report folder
        argv = ["evaluate", str(neurons_file), "--model", "no-such-model", "--out", str(tmp_path)]
    message = _fails(argv, ROWS["out-is-input"], capsys)
    assert str(stats_file if case != "report-holds-input" else neurons_file) in message
    assert _bytes_of([stats_file, neurons_file]) == before
    assert not (tmp_path / "n.pth").exists()


def test_out_inside_model_folder(tiny_model, text_corpus: Path, capsys) -> None:
    model = tiny_model("llama").path
    before = _bytes_of(sorted(p for p in model.iterdir() if p.is_file()))
    argv = ["collect", "--model", str(model), "--corpus", f"text:{text_corpus}"]
    _fails([*argv, "--out", str(model / "model.safetensors")], ROWS["out-inside-model"], capsys)
    assert _bytes_of(sorted(before)) == before
    # A corpus file is an input too.
    corpus_file = text_corpus / "en.txt"
    text = corpus_file.read_bytes()
    _fails([*argv, "--out", str(corpus_file), "--overwrite"], ROWS["out-is-input"], capsys)
    assert corpus_file.read_bytes() == text
    # So is a --resume checkpoint, before it exists.
    checkpoint = text_corpus.parent / "run.ckpt"
    _fails([*argv, "--resume", str(checkpoint), "--out", str(checkpoint)], "checkpoint", capsys)
    assert not checkpoint.exists()


def test_out_symlink(stats_file: Path, neurons_file: Path, tmp_path: Path, capsys) -> None:
    link = tmp_path / "link.json"
    link.symlink_to(neurons_file)
    before = neurons_file.read_bytes()
    argv = ["identify", str(stats_file), "--out", str(link), "--overwrite"]
    message = _fails(argv, ROWS["out-symlink"], capsys)
    assert str(neurons_file) in message
    assert link.is_symlink() and neurons_file.read_bytes() == before
    report_link = tmp_path / "report-link"
    report_link.symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    with pytest.raises(LapeError, match=ROWS["out-symlink"]):
        tl_lape.formats.check_report_folder(report_link)


def test_out_foreign_file(stats_file: Path, tmp_path: Path, capsys) -> None:
    notes = tmp_path / "notes.json"
    notes.write_text('{"my": "notes"}', encoding="utf-8")
    argv = ["identify", str(stats_file), "--out", str(notes)]
    message = _fails(argv, ROWS["out-foreign-file"], capsys)
    assert "--overwrite" in message and str(notes) in message
    assert notes.read_text(encoding="utf-8") == '{"my": "notes"}'
    with pytest.raises(LapeError, match=ROWS["out-foreign-file"]):
        _tiny_stats().save(notes)
    # With --overwrite the file is replaced; a file tl_lape wrote is replaced without it.
    assert main([*argv, "--overwrite"]) == 0
    assert tl_lape.LanguageNeurons.load(notes).languages == ("en", "fr")
    assert main(argv) == 0
    rucaibox = tmp_path / "x.neuron.pth"
    tl_lape.LanguageNeurons.load(notes).to_rucaibox(rucaibox)
    tl_lape.LanguageNeurons.load(notes).to_rucaibox(rucaibox)  # its own format: no refusal
    _tiny_stats().save(stats_file)  # likewise


def test_report_foreign_folder(neurons_file: Path, tmp_path: Path, capsys) -> None:
    from tl_lape.experiments.demo import demo_settings

    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "thesis.tex").write_text("chapter 1", encoding="utf-8")
    argv = ["evaluate", str(neurons_file), "--model", "/no/such/model", "--out", str(folder)]
    message = _fails(argv, ROWS["report-foreign-folder"], capsys)
    assert "thesis.tex" in message and "--overwrite" in message
    assert _listing(folder) == ["thesis.tex"]
    for command in (["demo", "--model", "demo"], ["steer", str(neurons_file), "--model", "x"]):
        _fails([*command, "--out", str(folder)], ROWS["report-foreign-folder"], capsys)
    with pytest.raises(LapeError, match=ROWS["report-foreign-folder"]):
        demo_settings("demo", out=folder)
    assert demo_settings("demo", out=folder, overwrite=True).out == folder
    # With --overwrite the command goes on (here to the model check, after the folder's).
    _fails([*argv, "--overwrite"], ROWS["model-missing-folder"], capsys)
    assert _listing(folder) == ["thesis.tex"]


# ----------------------------------------------------------------------------- strict JSON


def test_json_same_meaning_key(tmp_path: Path, text_corpus: Path, capsys) -> None:
    text = json.dumps({"en": {"1": [1]}, "fr": {"1": [3]}}).replace(
        '{"1": [1]}', '{"1": [1], "01": [2]}'
    )
    path = _write_neurons_doc(tmp_path / "n.json", neurons={})
    path.write_text(path.read_text().replace('"neurons": {}', f'"neurons": {text}'))
    before = path.read_bytes()
    with pytest.raises(LapeError, match=ROWS["json-same-meaning-key"]):
        tl_lape.LanguageNeurons.load(path)
    argv = ["evaluate", str(path), "--model", "no-such-model", "--corpus", f"text:{text_corpus}"]
    message = _fails([*argv, "--out", str(tmp_path / "r")], ROWS["json-same-meaning-key"], capsys)
    assert "'1' and '01'" in message and str(path) in message
    assert path.read_bytes() == before


def test_json_deep(tmp_path: Path) -> None:
    for depth in (100, 100_000):
        path = _write_neurons_doc(tmp_path / "n.json", metadata={})
        path.write_text(
            path.read_text().replace(
                '"metadata": {}', '"metadata": {"x": ' + "[" * depth + "]" * depth + "}"
            )
        )
        with pytest.raises(LapeError, match=ROWS["json-deep"]) as info:
            tl_lape.LanguageNeurons.load(path)
        assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_json_huge_integer(tmp_path: Path) -> None:
    path = _write_neurons_doc(tmp_path / "n.json")
    path.write_text(path.read_text().replace('"n_layers": 2', '"n_layers": ' + "9" * 5000))
    started = time.perf_counter()
    with pytest.raises(LapeError, match=ROWS["json-huge-integer"]) as info:
        tl_lape.LanguageNeurons.load(path)
    assert time.perf_counter() - started < 1.0
    assert "5000 digits" in str(info.value) and str(path) in str(info.value)


def test_neurons_huge_d_mlp(tmp_path: Path) -> None:
    path = _write_neurons_doc(tmp_path / "n.json", d_mlp=10**12)
    with pytest.raises(LapeError, match=ROWS["neurons-huge-d-mlp"]):
        tl_lape.LanguageNeurons.load(path)


def test_stats_header_edit(stats_file: Path) -> None:
    with safe_open(str(stats_file), framework="pt") as f:
        header = dict(f.metadata() or {})
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    from safetensors.torch import save_file

    swapped = {**header, "languages": json.dumps(["fr", "en"])}  # the columns now lie
    save_file(tensors, str(stats_file), metadata=swapped)
    with pytest.raises(LapeError, match=ROWS["stats-header-edit"]):
        ActivationStats.load(stats_file)
    extra = {**header, "note": "added"}  # an entry no tl_lape writes
    save_file(tensors, str(stats_file), metadata=extra)
    with pytest.raises(LapeError, match="unexpected entries"):
        ActivationStats.load(stats_file)


# ----------------------------------------------------------------------------- faults


def test_merge_dtype(tiny_model, text_corpus: Path, tmp_path: Path) -> None:
    from tl_lape.sources.corpora import load_text_files

    bridge = tiny_model("llama").bridge
    corpus = load_text_files(text_corpus, languages=["en", "fr"])
    stats = tl_lape.collect_activation_stats(bridge, corpus, seq_len=16, progress=False)
    assert stats.metadata["dtype"] == "float32"
    half = ActivationStats(
        stats.languages,
        stats.n_tokens,
        stats.active_counts,
        stats.activation_sums,
        {**stats.metadata, "dtype": "float16"},
    )
    with pytest.raises(LapeError, match=ROWS["merge-dtype"]) as info:
        _ = stats + half
    assert "'float32' vs 'float16'" in str(info.value)
    # Statistics without the field (files written before it existed) still merge and load.
    old = _tiny_stats()
    assert "dtype" not in old.metadata
    merged = old + _tiny_stats(seed=1)
    assert "dtype" not in merged.metadata
    same = stats + stats
    assert same.metadata["dtype"] == "float32"


def test_long_line_corpus(tiny_model, tmp_path: Path, capsys, monkeypatch) -> None:
    from tl_lape._adapter import ModelAdapter
    from tl_lape.collection.windows import DOCUMENT_PIECE_CHARS

    corpus = tmp_path / "corpus"
    corpus.mkdir()
    words = "the cat sat on the warm mat and watched the rain "
    (corpus / "en.txt").write_text(words * (50_000_000 // len(words)), encoding="utf-8")
    (corpus / "fr.txt").write_text("le chat dort sur le tapis " * 200, encoding="utf-8")
    tokenized: list[int] = []
    encode = ModelAdapter.encode

    def counting_encode(self: Any, text: str, **kwargs: Any) -> torch.Tensor:
        tokenized.append(len(text))
        return encode(self, text, **kwargs)

    monkeypatch.setattr(ModelAdapter, "encode", counting_encode)
    out = tmp_path / "stats.safetensors"
    argv = ["collect", "--model", str(tiny_model("llama").path), "--corpus", f"text:{corpus}"]
    argv += ["--languages", "en,fr", "--max-tokens-per-language", "512", "--seq-len", "16"]
    started = time.perf_counter()
    assert main([*argv, "--no-progress", "--out", str(out)]) == 0
    assert time.perf_counter() - started < 30  # was 97 s and 7.5 GB before pieces
    assert max(tokenized) <= DOCUMENT_PIECE_CHARS
    assert sum(tokenized) < 3 * DOCUMENT_PIECE_CHARS  # one piece of the 50 MB line, and fr
    assert ActivationStats.load(out).n_tokens.tolist() == [512, 512]


def test_collect_disk_full(tiny_model, text_corpus: Path, tmp_path: Path, capsys, monkeypatch):
    import errno

    import tl_lape.stats

    def full(*args: Any, **kwargs: Any) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    model = str(tiny_model("llama").path)
    argv = ["collect", "--model", model, "--corpus", f"text:{text_corpus}", "--languages", "en,fr"]
    argv += ["--seq-len", "16", "--no-progress"]
    out, checkpoint = tmp_path / "stats.safetensors", tmp_path / "run.ckpt"
    monkeypatch.setattr(tl_lape.stats, "write_safetensors", full)
    resume = ["--resume", str(checkpoint)]
    message = _fails([*argv, *resume, "--out", str(out)], ROWS["collect-disk-full"], capsys)
    assert "No space left on device" in message and str(checkpoint) in message
    assert checkpoint.is_file() and not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".stats")]  # no temp file
    message = _fails([*argv, "--out", str(out)], "the collected counts are lost", capsys)
    assert "--resume" in message
    monkeypatch.undo()
    assert main([*argv, *resume, "--out", str(out)]) == 0  # written from the checkpoint
    plain = tmp_path / "plain.safetensors"
    assert main([*argv, "--out", str(plain)]) == 0
    assert out.read_bytes() == plain.read_bytes()  # the same collection, the same bytes


# ----------------------------------------------------------------------------- API arguments


@pytest.mark.parametrize("positions", [slice(0, None, 0), slice(None, None, -1), slice("a", 3)])
def test_positions_slice_step(positions: slice) -> None:
    neurons = tl_lape.LanguageNeurons.from_indices({"en": {0: [1]}}, n_layers=2, d_mlp=64)
    with pytest.raises(
        LapeError,
        match=ROWS["positions-slice-step"]
        if positions.step is not None
        else "must be an int or None",
    ):
        deactivation_hooks(neurons, ["en"], positions=positions)
    with pytest.raises(LapeError, match="beyond any sequence"):
        deactivation_hooks(neurons, ["en"], positions=10**30)


def test_token_ids_vocab(tiny_model) -> None:
    from tl_lape.collection.windows import token_windows
    from tl_lape.judging.nll import window_nll

    bridge = tiny_model("llama").bridge
    vocab = bridge.cfg.d_vocab
    with pytest.raises(LapeError, match=ROWS["token-ids-vocab"]) as info:
        window_nll(bridge, torch.full((1, 8), vocab + 5))
    assert f"[{vocab + 5}, {vocab + 5}]" in str(info.value)
    with pytest.raises(LapeError, match=ROWS["token-ids-vocab"]):
        token_windows(bridge, torch.full((40,), -1), seq_len=8)


@pytest.mark.parametrize("seed", [-1, 2**63, 2**70])
def test_seed_range(seed: Any) -> None:
    from tl_lape.intervals import bootstrap_weights

    neurons = tl_lape.LanguageNeurons.from_indices({"en": {0: [1]}}, n_layers=2, d_mlp=64)
    with pytest.raises(LapeError, match=ROWS["seed-range"].replace("*", r"\*")):
        tl_lape.random_matched_neurons(neurons, seed=seed)
    with pytest.raises(LapeError, match=ROWS["seed-range"].replace("*", r"\*")):
        bootstrap_weights(3, seed=seed)


def test_save_onto_folder(tmp_path: Path) -> None:
    neurons = tl_lape.LanguageNeurons.from_indices({"en": {0: [1]}}, n_layers=2, d_mlp=64)
    means = tl_lape.ResidualMeans(
        ("en", "fr"), torch.ones(1, 2, 2, dtype=torch.float64), torch.tensor([3, 4])
    )
    for save in (_tiny_stats().save, neurons.save, neurons.to_rucaibox, means.save):
        with pytest.raises(LapeError, match=ROWS["save-onto-folder"]):
            save(tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_rucaibox_damaged(tmp_path: Path) -> None:
    path = tmp_path / "x.neuron.pth"
    tl_lape.LanguageNeurons.from_indices({"en": {0: [1]}}, n_layers=2, d_mlp=64).to_rucaibox(path)
    data = bytearray(path.read_bytes())
    data[data.index(b"LongStorage")] ^= 1  # one bit of the pickle inside the zip
    path.write_bytes(bytes(data))
    with pytest.raises(LapeError, match=ROWS["rucaibox-damaged"]) as info:
        tl_lape.LanguageNeurons.from_rucaibox(path, ["en"], d_mlp=64)
    assert str(path) in str(info.value)


def test_neurons_unknown_field(tmp_path: Path) -> None:
    path = _write_neurons_doc(tmp_path / "n.json", checksuo="sha256:0")  # a renamed "checksum"
    with pytest.raises(LapeError, match=ROWS["neurons-unknown-field"]) as info:
        tl_lape.LanguageNeurons.load(path)
    assert "'checksuo'" in str(info.value)


# ----------------------------------------------------------------------------- the second probe


@pytest.mark.parametrize("kind", ["fifo", "folder", "dangling-link"])
def test_corpus_not_a_file(kind: str, text_corpus: Path, tmp_path: Path, capsys) -> None:
    """A corpus file that is a named pipe would block the run forever; a folder or a dangling
    link was reported as missing. Each is named for what it is, before the model loads."""
    fr = text_corpus / "fr.txt"
    fr.unlink()
    if kind == "fifo":
        os.mkfifo(fr)
    elif kind == "folder":
        fr.mkdir()
    else:
        fr.symlink_to(tmp_path / "nowhere.txt")
    en = (text_corpus / "en.txt").read_bytes()
    out = tmp_path / "stats.safetensors"
    argv = ["collect", "--model", "no-such-model", "--corpus", f"text:{text_corpus}"]
    message = _fails(
        [*argv, "--languages", "en,fr", "--out", str(out)], ROWS[f"corpus-{kind}"], capsys
    )
    assert "'fr'" in message and str(fr) in message
    assert not out.exists() and (text_corpus / "en.txt").read_bytes() == en


def test_corpus_bom(tmp_path: Path) -> None:
    """A byte-order mark (saved by some editors) is not text: the documents are those of the
    same file without it (it used to stay glued to the first document's first word)."""
    folder = tmp_path
    (folder / "en.txt").write_bytes(b"The cat\nsat\n")
    (folder / "fr.txt").write_bytes(b"\xef\xbb\xbf" + b"Le chat\nassis\n")
    corpus = tl_lape.load_text_files(folder)
    assert corpus == {"en": ["The cat", "sat"], "fr": ["Le chat", "assis"]}
    with pytest.raises(LapeError, match="is not a text encoding Python knows"):
        tl_lape.load_text_files(folder, encoding="no-such-codec")


@pytest.mark.parametrize("kind", ["device", "fifo"])
def test_out_not_a_regular_file(kind: str, stats_file: Path, tmp_path: Path, capsys) -> None:
    """--out an existing device or named pipe: renaming the result onto it would replace the
    device node (as root, even /dev/null). Refused before any work; it is left as it was."""
    target = tmp_path / "target"
    if kind == "device":
        if os.geteuid() != 0:
            pytest.skip("making a device node needs root")
        os.mknod(target, 0o666 | stat.S_IFCHR, os.makedev(1, 3))  # a copy of /dev/null
    else:
        os.mkfifo(target)
    before = stats_file.read_bytes()
    argv = ["identify", str(stats_file), "--out", str(target), "--overwrite"]
    message = _fails(argv, ROWS["out-not-a-regular-file"], capsys)
    assert str(target) in message
    assert target.is_char_device() if kind == "device" else target.is_fifo()
    assert stats_file.read_bytes() == before


def test_python_m_tl_lape() -> None:
    """``python -m tl_lape`` is the ``tl-lape`` command (it used to say there is no
    ``tl_lape.__main__``)."""
    done = subprocess.run(
        [sys.executable, "-m", "tl_lape", "identify", "/no/such/stats", "--out", "x.json"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().splitlines()[-1].startswith("tl-lape identify: error: ")


def test_options_only_with(stats_file: Path, neurons_file: Path, tmp_path: Path, capsys) -> None:
    """An option that does nothing without another was silently ignored (a --stability-boot of
    0 without --stability ran and exited 0); now it is refused, before any work."""
    out = tmp_path / "out"
    corpus = ["--model", "no-such-model", "--corpus", "text:/nowhere", "--languages", "en,fr"]
    cases = [
        (
            ["collect", *corpus, "--checkpoint-every", "5"],
            "--checkpoint-every only apply with --resume",
        ),
        (
            ["identify", str(stats_file), "--stability-boot", "0"],
            "--stability-boot only apply with --stability",
        ),
        (
            ["evaluate", str(neurons_file), *corpus, "--pool", "5"],
            "--pool only apply with --control activity",
        ),
        (
            ["evaluate", str(neurons_file), *corpus, "--selector-sizes", "budget"],
            "only apply with --stats",
        ),
        (
            ["demo", "--model", "demo", "--no-evaluate", "--eval-random", "5"],
            "only apply with --evaluate",
        ),
        (["demo", "--model", "demo", "--steer-new-tokens", "8"], "only apply with --evaluate"),
    ]
    before = (stats_file.read_bytes(), neurons_file.read_bytes())
    for argv, said in cases:
        message = _fails([*argv, "--out", str(out)], ROWS["options-only-with"], capsys)
        assert said in message and "leave it out" in message
        assert not out.exists()
    assert (stats_file.read_bytes(), neurons_file.read_bytes()) == before


def test_n_boot_huge(neurons_file: Path, tmp_path: Path, capsys) -> None:
    """--n-boot 10**12 ran the whole evaluation, then died in the allocator with a traceback;
    replicates are bounded (checks.MAX_N_BOOT) and refused before the model loads."""
    out = tmp_path / "out"
    argv = ["evaluate", str(neurons_file), "--model", "demo", "--corpus", "text:/nowhere"]
    message = _fails(
        [*argv, "--n-boot", str(10**12), "--out", str(out)], ROWS["n-boot-huge"], capsys
    )
    assert "received 1000000000000" in message and not out.exists()
    from tl_lape.experiments.analysis import bootstrap_selection
    from tl_lape.intervals import bootstrap_weights

    with pytest.raises(LapeError, match=ROWS["n-boot-huge"]):
        bootstrap_weights(3, n_boot=10**12, seed=0)
    with pytest.raises(LapeError, match="n_boot must be an int from 2 to 100000"):
        bootstrap_selection([_tiny_stats(), _tiny_stats(seed=1)], n_boot=10**9)


def test_language_code_long(text_corpus: Path, tmp_path: Path, capsys) -> None:
    """A 5,000-letter language code was printed whole: the one error line ran to 5 KB."""
    out = tmp_path / "stats.safetensors"
    argv = ["collect", "--model", "no-such-model", "--corpus", f"text:{text_corpus}"]
    message = _fails(
        [*argv, "--languages", "en," + "f" * 5000, "--out", str(out)],
        ROWS["language-code-long"],
        capsys,
    )
    assert len(message) < 400 and "(5004 characters)" in message  # the list's repr


def test_corpus_text_no_folder(tmp_path: Path, capsys) -> None:
    """``--corpus text:`` read <lang>.txt of the working directory, and said 'en.txt' does not
    exist; it now says the folder is missing from the option."""
    out = tmp_path / "stats.safetensors"
    argv = ["collect", "--model", "no-such-model", "--corpus", "text:", "--out", str(out)]
    _fails(argv, ROWS["corpus-text-no-folder"], capsys)


def test_report_json_edited(tmp_path: Path) -> None:
    """evaluation.json and study.json edited by hand were read back as edited (an edited
    n_boot, or a success rate, became the report's); they carry a checksum now."""
    from tl_lape.experiments.reports import write_report
    from tl_lape.formats import tagged_json_text

    matrix = tl_lape.PerplexityMatrix(
        ("en",), ("en",), torch.ones(2, 1, dtype=torch.float64), torch.tensor([4])
    )
    write_report(tl_lape.EvaluationReport(matrix, n_boot=100), tmp_path, "evaluation")
    path = tmp_path / "evaluation.json"
    assert tl_lape.EvaluationReport.load(path).n_boot == 100
    path.write_text(path.read_text(encoding="utf-8").replace('"n_boot": 100', '"n_boot": 7'))
    with pytest.raises(LapeError, match=ROWS["report-json-edited"]):
        tl_lape.EvaluationReport.load(path)
    row = {"phase": "fresh", "setting": "english", "config": "lape", "method": "lape"}
    doc = {"rows": [{**row, "target": "fr", "success_rate": 0.5}], "chosen": {}}
    study = tmp_path / "study.json"
    study.write_text(tagged_json_text(doc, tag="tl_lape.SteeringStudy", version=1))
    assert tl_lape.SteeringStudy.load(tmp_path).rows[0]["success_rate"] == 0.5
    study.write_text(study.read_text(encoding="utf-8").replace("0.5", "0.9"))
    with pytest.raises(LapeError, match=ROWS["report-json-edited"]):
        tl_lape.SteeringStudy.load(tmp_path)


def test_file_of_another_kind(
    tiny_model, stats_file: Path, neurons_file: Path, text_corpus: Path, tmp_path: Path, capsys
) -> None:
    """A valid file of another kind was called "not valid JSON (corrupted or truncated?)" or
    "header too large", and a neuron set given as --resume got the advice to delete it; the
    message now says what the file is."""
    paper = tmp_path / "x.neuron.pth"
    tl_lape.LanguageNeurons.load(neurons_file).to_rucaibox(paper)
    before = {p: p.read_bytes() for p in (stats_file, neurons_file, paper)}
    out = tmp_path / "out"
    evaluate = ["--model", "demo", "--corpus", "text:/nowhere", "--out", str(out)]
    model = str(tiny_model("llama").path)
    collect = ["collect", "--model", model, "--corpus", f"text:{text_corpus}", "--seq-len", "8"]
    collect += ["--languages", "en,fr"]
    cases = [
        (["evaluate", str(paper), *evaluate], "is a zip archive, such as the LAPE paper's"),
        (["evaluate", str(stats_file), *evaluate], "safetensors file of format tl_lape.Activ"),
        (["identify", str(neurons_file), "--out", str(out)], ROWS["file-of-another-kind"]),
        (
            [*collect, "--resume", str(neurons_file), "--out", str(out)],
            "not a collection checkpoint",
        ),
    ]
    for argv, said in cases:
        message = _fails(argv, said, capsys)
        assert "delete" not in message and not out.exists()
    assert {p: p.read_bytes() for p in before} == before
    # As a user meets it: without the test suite's run-time type checker, which would refuse
    # the argument first.
    code = "import tl_lape\nfor bad in (123, None):\n"
    code += "    try:\n        tl_lape.ActivationStats.load(bad)\n"
    code += "    except tl_lape.LapeError as err:\n        print(err)\n"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    said = done.stdout.splitlines()
    assert done.returncode == 0 and len(said) == 2, done.stderr
    assert all(ROWS["api-path-type"] in line for line in said)


def test_corpus_token_ids_advice(tiny_model) -> None:
    """A corpus of NumPy token ids, or a list of tensors, said only "must hold strings"; the
    message now says how to pass token ids."""
    import re

    import numpy as np

    bridge = tiny_model("llama").bridge
    for item in (np.arange(40) % 30, torch.arange(40) % 30):
        ids = (x for x in [item])  # a generator: the run-time type check cannot look inside
        with pytest.raises(LapeError, match=re.escape(ROWS["corpus-token-ids"])):
            tl_lape.collect_activation_stats(
                bridge, {"en": ids, "fr": ["Le chat dort."] * 20}, seq_len=8, progress=False
            )
