"""A hostile-input probe of tl_lape, as a new user would try it (issue 24).

Runs every case in one process on the bundled demo model (``--model demo``), through the
command line (``tl_lape.cli.main``, as ``tl-lape`` runs it) or the public API, and prints one
JSON line per case: the call, the exit status or exception, the last line of standard error,
the seconds taken and whether the input files are byte-identical afterwards. Verdicts are given
by hand in ``README.md`` beside it.

Usage: ``python benchmarks/results/2026-12-04-hostile-probe/probe.py [CASE_ID ...]``
"""

import contextlib
import hashlib
import io
import json
import os
import shutil
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

import tl_lape
from tl_lape.cli import main

REFERENCE = Path(__file__).resolve().parents[4] / "shared" / "reference" / "rucaibox-neurons"
TEXT = {
    "en": "The server keeps its settings in a file under the etc folder. ",
    "fr": "Le serveur garde ses réglages dans un fichier du dossier etc. ",
}


def _digest(paths: list[Path]) -> str:
    h = hashlib.sha256()
    for p in paths:
        if p.is_file():
            h.update(p.read_bytes())
        elif p.is_dir():
            for q in sorted(p.rglob("*")):
                if q.is_file():
                    h.update(str(q).encode() + q.read_bytes())
    return h.hexdigest()


def cli(argv: list[str], inputs: list[Path] = ()) -> dict[str, Any]:
    before = _digest(list(inputs))
    err, out = io.StringIO(), io.StringIO()
    start = time.perf_counter()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
        try:
            rc: Any = main(argv)
        except SystemExit as exit_:
            rc = exit_.code
        except BaseException as exc:  # a raw traceback: what the user would see
            rc = f"raised {type(exc).__name__}"
            traceback.print_exc()
    lines = [line for line in err.getvalue().splitlines() if line.strip()]
    return {
        "rc": rc,
        "said": (lines or out.getvalue().strip().splitlines() or [""])[-1][:400],
        "traceback": "Traceback" in err.getvalue(),
        "s": round(time.perf_counter() - start, 1),
        "inputs_same": _digest(list(inputs)) == before,
    }


def api(fn: Callable[[], Any]) -> dict[str, Any]:
    start = time.perf_counter()
    try:
        value = fn()
        said = f"returned {type(value).__name__}: {repr(value)[:200]}"
        rc = "ok"
    except tl_lape.LapeError as err:
        rc, said = "LapeError", str(err)
    except BaseException as exc:
        rc, said = f"raised {type(exc).__name__}", str(exc).splitlines()[0] if str(exc) else ""
    return {"rc": rc, "said": said[:400], "s": round(time.perf_counter() - start, 1)}


def build(root: Path) -> dict[str, Path]:
    """The probe's fixtures: a text corpus, statistics S and a neuron set N of the demo model."""
    corpus = root / "corpus"
    corpus.mkdir()
    for lang, sentence in TEXT.items():
        (corpus / f"{lang}.txt").write_text((sentence * 4 + "\n") * 60, encoding="utf-8")
    stats, neurons = root / "S.safetensors", root / "N.json"
    base = ["--model", "demo", "--corpus", f"text:{corpus}", "--languages", "en,fr"]
    base += ["--seq-len", "32", "--max-tokens-per-language", "1024", "--no-progress"]
    assert main(["collect", *base, "--out", str(stats)]) == 0
    assert main(["identify", str(stats), "--top-rate", "0.05", "--out", str(neurons)]) == 0
    return {"corpus": corpus, "S": stats, "N": neurons}


def cases(root: Path, f: dict[str, Path]) -> dict[str, Callable[[], dict[str, Any]]]:
    S, N, corpus = f["S"], f["N"], f["corpus"]
    out = root / "out"
    small = ["--seq-len", "32", "--max-tokens-per-language", "256", "--no-progress"]
    col = ["collect", "--model", "demo", "--languages", "en,fr", *small]

    def corpus_with(name: str, fr: bytes | None = None, *, make: Any = None) -> str:
        d = root / name
        d.mkdir()
        shutil.copy(corpus / "en.txt", d / "en.txt")
        if make is not None:
            make(d / "fr.txt")
        else:
            (d / "fr.txt").write_bytes(fr or b"")
        return f"text:{d}"

    def collect_on(name: str, fr: bytes | None = None, *, make: Any = None) -> dict[str, Any]:
        src = corpus_with(name, fr, make=make)
        return cli([*col, "--corpus", src, "--out", str(out / f"{name}.safetensors")])

    ev = ["evaluate", str(N), "--model", "demo", "--corpus", f"text:{corpus}"]
    ev += ["--languages", "en,fr", *small, "--n-random", "1", "--n-boot", "50"]
    st = ["steer", str(S), "--model", "demo", "--targets", "fr", "--modes", "add"]
    st += ["--strengths", "add=2", "--top-rates", "0.05", "--settings", "english"]
    st += ["--max-new-tokens", "4", "--reference-corpus", "none", "--no-progress"]
    idf = ["identify", str(S)]
    paper = REFERENCE / "LLaMA-2-7B.neuron.pth"
    stats = tl_lape.ActivationStats.load(S)
    neurons = tl_lape.LanguageNeurons.load(N)

    def mk(name: str) -> Path:
        p = root / name
        p.mkdir(parents=True, exist_ok=True)
        return p

    def model() -> Any:
        return tl_lape.load_model("demo")

    c: dict[str, Callable[[], dict[str, Any]]] = {
        # ---- corpus files
        "corpus-empty-file": lambda: collect_on("c_empty", b""),
        "corpus-whitespace-only": lambda: collect_on("c_ws", b"  \n\t\n\r\n   \n"),
        "corpus-bom": lambda: _bom(root, col, corpus, out),
        "corpus-nul-bytes": lambda: collect_on("c_nul", ("abc\x00def " * 200).encode()),
        "corpus-crlf": lambda: _crlf(root, col, corpus, out),
        "corpus-file-is-folder": lambda: collect_on("c_dir", make=lambda p: p.mkdir()),
        "corpus-fifo": lambda: collect_on("c_fifo", make=lambda p: os.mkfifo(p)),
        "corpus-dangling-link": lambda: collect_on(
            "c_link", make=lambda p: p.symlink_to(root / "nowhere.txt")
        ),
        "corpus-link-loop": lambda: collect_on("c_loop", make=lambda p: p.symlink_to(p)),
        "corpus-text-empty-path": lambda: cli([*col, "--corpus", "text:", "--out", str(out / "x")]),
        "corpus-unknown-scheme": lambda: cli(
            [*col, "--corpus", "ftp://x", "--out", str(out / "x")]
        ),
        "language-code-huge": lambda: cli(
            [
                "collect",
                "--model",
                "demo",
                "--corpus",
                f"text:{corpus}",
                "--languages",
                "en," + "f" * 5000,
                *small,
                "--out",
                str(out / "x"),
            ]
        ),
        "languages-duplicate": lambda: cli(
            [
                "collect",
                "--model",
                "demo",
                "--corpus",
                f"text:{corpus}",
                "--languages",
                "en,en",
                *small,
                "--out",
                str(out / "dup.safetensors"),
            ]
        ),
        # ---- numbers on the command line
        "collect-seq-len-negative": lambda: cli(
            [*col, "--corpus", f"text:{corpus}", "--seq-len", "-5", "--out", str(out / "x")]
        ),
        "collect-seq-len-huge": lambda: cli(
            [
                *col,
                "--corpus",
                f"text:{corpus}",
                "--seq-len",
                "1000000000000",
                "--out",
                str(out / "x"),
            ]
        ),
        "collect-batch-size-huge": lambda: cli(
            [
                *col,
                "--corpus",
                f"text:{corpus}",
                "--batch-size",
                "1000000000",
                "--out",
                str(out / "bs.safetensors"),
            ]
        ),
        "collect-checkpoint-every-zero": lambda: cli(
            [
                *col,
                "--corpus",
                f"text:{corpus}",
                "--resume",
                str(out / "ck"),
                "--checkpoint-every",
                "0",
                "--out",
                str(out / "x"),
            ]
        ),
        "collect-checkpoint-every-without-resume": lambda: cli(
            [
                *col,
                "--corpus",
                f"text:{corpus}",
                "--checkpoint-every",
                "5",
                "--out",
                str(out / "ce.safetensors"),
            ]
        ),
        "collect-shards-zero": lambda: cli(
            [*col, "--corpus", f"text:{corpus}", "--shards", "0", "--out", str(out / "x")]
        ),
        "collect-shards-huge": lambda: cli(
            [
                *col,
                "--corpus",
                f"text:{corpus}",
                "--shards",
                "1000000",
                "--out",
                str(out / "sh.safetensors"),
            ]
        ),
        "identify-top-rate-zero": lambda: cli(
            [*idf, "--top-rate", "0", "--out", str(out / "t0.json")], [S]
        ),
        "identify-top-rate-nan": lambda: cli(
            [*idf, "--top-rate", "nan", "--out", str(out / "tn.json")], [S]
        ),
        "identify-filter-rate-one": lambda: cli(
            [*idf, "--filter-rate", "1", "--out", str(out / "f1.json")], [S]
        ),
        "identify-bar-ratio-inf": lambda: cli(
            [*idf, "--activation-bar-ratio", "inf", "--out", str(out / "bi.json")], [S]
        ),
        "identify-stability-boot-without-stability": lambda: cli(
            [*idf, "--stability-boot", "0", "--out", str(out / "sb.json")], [S]
        ),
        "evaluate-n-random-negative": lambda: cli(
            [*ev, "--n-random", "-1", "--out", str(out / "e1")], [N]
        ),
        "evaluate-seed-float": lambda: cli([*ev, "--seed", "1.5", "--out", str(out / "e2")], [N]),
        "evaluate-n-boot-huge": lambda: cli(
            [*ev, "--n-boot", "1000000000000", "--out", str(out / "e3")], [N]
        ),
        "evaluate-level-one": lambda: cli([*ev, "--level", "1", "--out", str(out / "e4")], [N]),
        "evaluate-positions-zero": lambda: cli(
            [*ev, "--positions-per-window", "0", "--out", str(out / "e5")], [N]
        ),
        "evaluate-pool-with-layer-control": lambda: cli(
            [*ev, "--pool", "5", "--control", "layer", "--out", str(out / "e6")], [N]
        ),
        "evaluate-selector-sizes-without-stats": lambda: cli(
            [*ev, "--selector-sizes", "budget", "--out", str(out / "e7")], [N]
        ),
        "steer-huge-finite-strength": lambda: cli(
            [*st[:9], "add=1e308", *st[10:], "--out", str(out / "s1")], [S]
        ),
        "steer-max-new-tokens-zero": lambda: cli(
            [*st, "--max-new-tokens", "0", "--out", str(out / "s2")], [S]
        ),
        "steer-top-rates-zero": lambda: cli(
            [*st[:11], "0", *st[12:], "--out", str(out / "s3")], [S]
        ),
        "steer-unknown-target": lambda: cli(
            [*st[:5], "xx", *st[6:], "--out", str(out / "s4")], [S]
        ),
        "steer-means-without-study": lambda: cli(
            [*st, "--means", str(S), "--out", str(out / "s5")], [S]
        ),
        "steer-diffmean-layer-out-of-range": lambda: cli(
            [
                "steer",
                str(S),
                "--model",
                "demo",
                "--study",
                "--targets",
                "fr",
                "--reference-corpus",
                f"text:{corpus}",
                "--diffmean-layers",
                "99",
                "--max-new-tokens",
                "4",
                "--no-progress",
                "--out",
                str(out / "s6"),
            ],
            [S],
        ),
        "demo-eval-random-zero": lambda: cli(
            [
                "demo",
                "--model",
                "demo",
                "--evaluate",
                "--eval-random",
                "0",
                "--out",
                str(out / "d1"),
                "--no-progress",
            ]
        ),
        "demo-no-evaluate-with-eval-options": lambda: cli(
            [
                "demo",
                "--model",
                "demo",
                "--no-evaluate",
                "--eval-random",
                "5",
                "--max-tokens-per-language",
                "256",
                "--out",
                str(out / "d2"),
                "--no-progress",
            ]
        ),
        # ---- files from elsewhere
        "evaluate-paper-neuron-file": lambda: cli(
            [*ev[:1], str(paper), *ev[2:], "--out", str(out / "p1")]
        ),
        "evaluate-stats-as-neurons": lambda: cli(
            [*ev[:1], str(S), *ev[2:], "--out", str(out / "p2")], [S]
        ),
        "identify-neurons-as-stats": lambda: cli(
            ["identify", str(N), "--out", str(out / "p3.json")], [N]
        ),
        "steer-stats-as-means": lambda: cli(
            [
                "steer",
                str(S),
                "--model",
                "demo",
                "--study",
                "--targets",
                "fr",
                "--means",
                str(S),
                "--reference-corpus",
                f"text:{corpus}",
                "--max-new-tokens",
                "4",
                "--no-progress",
                "--out",
                str(out / "p4"),
            ],
            [S],
        ),
        "collect-resume-from-neurons": lambda: cli(
            [
                *col,
                "--corpus",
                f"text:{corpus}",
                "--resume",
                str(N),
                "--out",
                str(out / "p5.safetensors"),
            ],
            [N],
        ),
        "neurons-json-with-bom": lambda: _bom_json(root, N, ev, out),
        "neurons-json-null": lambda: _json_doc(root, "null", ev, out),
        "neurons-empty-file": lambda: _json_doc(root, "", ev, out),
        # ---- output paths
        "out-path-spaces-unicode": lambda: cli(
            [*idf, "--out", str(mk("dir with spaces/é 中") / "n é.json")], [S]
        ),
        "out-char-device": lambda: _device_out(root, idf, S),
        "out-fifo": lambda: _fifo_out(root, idf, S),
        "out-trailing-slash": lambda: cli([*idf, "--out", str(out / "ts.json") + "/"], [S]),
        "evaluation-json-edited": lambda: _edit_report(root, "evaluation"),
        "study-json-edited": lambda: _edit_report(root, "study"),
        # ---- the API, with other types
        "api-top-rate-numpy": lambda: api(
            lambda: tl_lape.identify_language_neurons(stats, top_rate=np.float64(0.05)).counts()
        ),
        "api-top-rate-bool": lambda: api(
            lambda: tl_lape.identify_language_neurons(stats, top_rate=True)
        ),
        "api-corpus-string-not-list": lambda: api(
            lambda: tl_lape.collect_activation_stats(
                model(),
                {"en": TEXT["en"] * 40, "fr": TEXT["fr"] * 40},
                seq_len=16,
                max_tokens_per_language=64,
                progress=False,
            ).n_tokens.tolist()
        ),
        "api-corpus-numpy-ids": lambda: api(
            lambda: tl_lape.collect_activation_stats(
                model(),
                {"en": np.arange(100) % 50, "fr": np.arange(100) % 40},
                seq_len=16,
                progress=False,
            ).n_tokens.tolist()
        ),
        "api-corpus-list-of-tensors": lambda: api(
            lambda: tl_lape.collect_activation_stats(
                model(),
                {"en": [torch.arange(40)], "fr": [torch.arange(40)]},
                seq_len=16,
                progress=False,
            ).n_tokens.tolist()
        ),
        "api-seed-float": lambda: api(lambda: tl_lape.random_matched_neurons(neurons, seed=1.5)),
        "api-seed-numpy": lambda: api(
            lambda: tl_lape.random_matched_neurons(neurons, seed=np.int64(3)).counts()
        ),
        "api-from-indices-numpy": lambda: api(
            lambda: tl_lape.LanguageNeurons.from_indices(
                {"en": {0: np.array([1, 2])}, "fr": {1: [3]}}, n_layers=2, d_mlp=64
            ).counts()
        ),
        "api-deactivate-unknown-language": lambda: api(
            lambda: tl_lape.deactivation_hooks(neurons, "xx")
        ),
        "api-max-tokens-float": lambda: api(
            lambda: tl_lape.collect_activation_stats(
                model(),
                {"en": ["a b c"] * 50, "fr": ["d e f"] * 50},
                seq_len=16,
                max_tokens_per_language=64.5,
                progress=False,
            )
        ),
        "api-load-int-path": lambda: api(lambda: tl_lape.ActivationStats.load(123)),
        "api-corpus-not-mapping": lambda: api(
            lambda: tl_lape.collect_activation_stats(model(), ["a b c"], progress=False)
        ),
        "python-m-tl_lape": lambda: _python_m(),
    }
    return c


def _bom(root: Path, col: list[str], corpus: Path, out: Path) -> dict[str, Any]:
    """The same text with and without a UTF-8 byte-order mark must give the same statistics."""
    d = root / "c_bom"
    d.mkdir()
    for lang in ("en", "fr"):
        (d / f"{lang}.txt").write_bytes(b"\xef\xbb\xbf" + (corpus / f"{lang}.txt").read_bytes())
    r = cli([*col, "--corpus", f"text:{d}", "--out", str(out / "bom.safetensors")])
    plain = cli([*col, "--corpus", f"text:{corpus}", "--out", str(out / "plain.safetensors")])
    a = tl_lape.ActivationStats.load(out / "bom.safetensors")
    b = tl_lape.ActivationStats.load(out / "plain.safetensors")
    r["same_as_without"] = bool(torch.equal(a.active_counts, b.active_counts)) and plain["rc"] == 0
    return r


def _crlf(root: Path, col: list[str], corpus: Path, out: Path) -> dict[str, Any]:
    d = root / "c_crlf"
    d.mkdir()
    for lang in ("en", "fr"):
        (d / f"{lang}.txt").write_bytes(
            (corpus / f"{lang}.txt").read_bytes().replace(b"\n", b"\r\n")
        )
    r = cli([*col, "--corpus", f"text:{d}", "--out", str(out / "crlf.safetensors")])
    if not (out / "plain.safetensors").exists():
        cli([*col, "--corpus", f"text:{corpus}", "--out", str(out / "plain.safetensors")])
    a = tl_lape.ActivationStats.load(out / "crlf.safetensors")
    b = tl_lape.ActivationStats.load(out / "plain.safetensors")
    r["same_as_lf"] = bool(torch.equal(a.active_counts, b.active_counts))
    return r


def _bom_json(root: Path, N: Path, ev: list[str], out: Path) -> dict[str, Any]:
    p = root / "bom.json"
    p.write_bytes(b"\xef\xbb\xbf" + N.read_bytes())
    return cli([ev[0], str(p), *ev[2:], "--out", str(out / "bj")], [p])


def _json_doc(root: Path, text: str, ev: list[str], out: Path) -> dict[str, Any]:
    p = root / f"doc{len(text)}.json"
    p.write_text(text, encoding="utf-8")
    return cli([ev[0], str(p), *ev[2:], "--out", str(out / f"jd{len(text)}")], [p])


def _device_out(root: Path, idf: list[str], S: Path) -> dict[str, Any]:
    """--out an existing character device (a copy of /dev/null made with mknod)."""
    dev = root / "null"
    os.mknod(dev, 0o666 | 0o020000, os.makedev(1, 3))
    r = cli([*idf, "--out", str(dev)], [S])
    r["still_a_device"] = dev.is_char_device()
    return r


def _fifo_out(root: Path, idf: list[str], S: Path) -> dict[str, Any]:
    fifo = root / "fifo.json"
    os.mkfifo(fifo)
    r = cli([*idf, "--out", str(fifo)], [S])
    r["still_a_fifo"] = fifo.is_fifo()
    return r


def _edit_report(root: Path, kind: str) -> dict[str, Any]:
    """A report file with one number changed by hand, read back with the API."""
    from tl_lape.experiments.evaluation import EvaluationReport, PerplexityMatrix
    from tl_lape.experiments.reports import write_report
    from tl_lape.experiments.steering_study import SteeringStudy

    folder = root / f"edit_{kind}"
    if kind == "evaluation":
        m = PerplexityMatrix(
            ("en",), ("en",), torch.ones(2, 1, dtype=torch.float64), torch.tensor([4])
        )
        write_report(EvaluationReport(m, n_boot=100), folder, "evaluation", markdown=False)
        path = folder / "evaluation.json"
        path.write_text(path.read_text().replace('"n_boot": 100', '"n_boot": 7'))
        return api(lambda: EvaluationReport.from_dict(json.loads(path.read_text())).n_boot)
    row = {
        "phase": "fresh",
        "setting": "english",
        "config": "lape",
        "method": "lape",
        "target": "fr",
        "success_rate": 0.5,
    }
    folder.mkdir()
    from tl_lape.formats import tagged_json_text

    (folder / "study.json").write_text(
        tagged_json_text({"rows": [row], "chosen": {}}, tag="tl_lape.SteeringStudy", version=1)
    )
    p = folder / "study.json"
    p.write_text(p.read_text().replace('"success_rate": 0.5', '"success_rate": 0.9'))
    return api(lambda: SteeringStudy.load(folder).rows[0]["success_rate"])


def _python_m() -> dict[str, Any]:
    import subprocess

    r = subprocess.run([sys.executable, "-m", "tl_lape", "--help"], capture_output=True, text=True)
    lines = (r.stderr or r.stdout).strip().splitlines()
    return {"rc": r.returncode, "said": (lines[0] if lines else "")[:200]}


if __name__ == "__main__":
    root = Path(tempfile.mkdtemp(prefix="tl_lape_probe_"))
    with contextlib.redirect_stdout(io.StringIO()):
        fixtures = build(root)
    (root / "out").mkdir()
    wanted = sys.argv[1:]
    for case_id, run in cases(root, fixtures).items():
        if wanted and case_id not in wanted:
            continue
        try:
            record = run()
        except BaseException as exc:  # the probe's own failure, not tl_lape's
            record = {"rc": "PROBE ERROR", "said": f"{type(exc).__name__}: {exc}"[:300]}
        print(json.dumps({"id": case_id, **record}, ensure_ascii=False), flush=True)
