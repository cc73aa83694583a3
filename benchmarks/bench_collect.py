#!/usr/bin/env python
"""Benchmark: what collecting LAPE statistics costs, next to a plain forward pass.

One run, one model, one set of tokens. The same windows go through the same random-init
Llama-style model (about 29M parameters, built locally from a ``LlamaConfig``; nothing is
downloaded) in four ways:

(a) ``forward``   a plain forward pass through the TransformerBridge, to logits;
(b) ``tl_lape``   :func:`tl_lape.collect_activation_stats`;
(c) ``tl_cache``  the naive TransformerLens way: ``run_with_cache`` with a ``names_filter`` on the
                  MLP ``hook_pre`` hooks of every layer, then counting from the cache;
(d) ``hf_hooks``  plain PyTorch forward hooks on the ``act_fn`` module of every ``LlamaMLP`` of
                  the Hugging Face model (eager attention, like the bridge), counting inside the
                  hook and running to logits, as hand-written ports of the paper's code do.

Throughput: every round runs each method once on all tokens, the order rotated from round to
round; the reported figure is the median over rounds. Ratios are paired per round
(``time(a) / time(x)``, so a ratio above 1 means faster than the plain forward pass) and the
median is reported, which keeps a shared machine's load drifts out of the comparison.

Memory: every point runs in a fresh Python process, so that neither the allocator's free lists
nor the monotone peak counters of another measurement leak in. The worker loads the model, makes
the tokens, resets the kernel's peak-RSS mark (``/proc/self/clear_refs``, Linux) and then runs
the method; the figure is the peak resident set size during the run minus the resident set size
just before it. That counts every allocation (torch's CPU tensors included, which ``tracemalloc``
cannot see) and nothing from before the run. Where the peak mark cannot be reset, the worker
falls back to ``getrusage``'s ``ru_maxrss`` and says so. Workers run with a fixed glibc mmap
threshold (see ``WORKER_ENV``): with glibc's default, moving threshold the same run's peak
varies by tens of MiB from one process to the next.

Finally :func:`tl_lape.identify_language_neurons` is timed on random statistics of
LLaMA-2-70B's size (80 layers, 28,672 neurons, 7 languages), in its own process.

Run from the repository root:

    .venv/bin/python benchmarks/bench_collect.py            # full run, ~4 min on 2 CPU cores
    .venv/bin/python benchmarks/bench_collect.py --quick    # smoke run, seconds

The full run writes ``benchmarks/results/<date>-cpu.md`` and ``.json``; ``--quick`` writes only
where ``--output-dir`` says.
"""

import argparse
import datetime
import gc
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script from a checkout without installing
    sys.path.insert(0, str(REPO))

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

METHODS = ("forward", "tl_lape", "tl_cache", "hf_hooks")
LABELS = {
    "forward": "(a) plain forward to logits (bridge)",
    "tl_lape": "(b) tl_lape.collect_activation_stats",
    "tl_cache": "(c) run_with_cache(hook_pre) + count",
    "hf_hooks": "(d) HF act_fn forward hooks + count",
}
LANGUAGES = ("aa", "bb")


@dataclass(frozen=True)
class ModelSize:
    """The shape of the random-init Llama-style model."""

    vocab_size: int
    d_model: int
    d_mlp: int
    n_layers: int
    n_heads: int
    n_ctx: int


@dataclass(frozen=True)
class Settings:
    """Everything one benchmark run depends on."""

    model: ModelSize
    seq_len: int
    batch_size: int
    windows_per_language: int  # throughput runs
    rounds: int
    threads: int
    # memory points: (method, windows per language, batch size)
    memory_points: tuple[tuple[str, int, int], ...]
    identify_shape: tuple[int, int, int]  # n_layers, d_mlp, n_languages
    identify_repeats: int


FULL = Settings(
    model=ModelSize(vocab_size=8192, d_model=512, d_mlp=1536, n_layers=6, n_heads=8, n_ctx=1024),
    seq_len=256,
    batch_size=4,
    windows_per_language=8,
    rounds=10,
    threads=1,
    memory_points=(
        ("forward", 16, 4),
        ("forward", 16, 16),
        ("hf_hooks", 16, 4),
        ("tl_lape", 4, 4),
        ("tl_lape", 16, 4),
        ("tl_lape", 64, 4),
        ("tl_lape", 16, 16),
        ("tl_cache", 4, 4),
        ("tl_cache", 16, 4),
        ("tl_cache", 64, 4),
        ("tl_cache", 16, 16),
    ),
    identify_shape=(80, 28672, 7),
    identify_repeats=3,
)

QUICK = Settings(
    model=ModelSize(vocab_size=512, d_model=64, d_mlp=256, n_layers=2, n_heads=4, n_ctx=128),
    seq_len=32,
    batch_size=4,
    windows_per_language=4,
    rounds=2,
    threads=1,
    memory_points=(("tl_lape", 4, 4),),
    identify_shape=(4, 512, 7),
    identify_repeats=1,
)


# --------------------------------------------------------------------------------------------
# model and tokens


def build_model_dir(size: ModelSize, directory: Path, *, seed: int = 0) -> Path:
    """Save a random-init Llama-style model and a tiny character tokenizer to ``directory``.

    The tokenizer only exists so that the bridge boots offline; the benchmark feeds token ids.
    """
    import transformers
    from tokenizers import Tokenizer, models, pre_tokenizers

    config = transformers.LlamaConfig(
        vocab_size=size.vocab_size,
        hidden_size=size.d_model,
        intermediate_size=size.d_mlp,
        num_hidden_layers=size.n_layers,
        num_attention_heads=size.n_heads,
        num_key_value_heads=size.n_heads,
        max_position_embeddings=size.n_ctx,
        hidden_act="silu",
        tie_word_embeddings=False,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    )
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(config, attn_implementation="eager")
    model.save_pretrained(directory)

    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3}
    vocab.update({chr(ord("a") + i): 4 + i for i in range(26)})
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split("", "isolated")
    fast = transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
    )
    fast.save_pretrained(directory)
    return directory


def load_bridge(directory: Path) -> Any:
    from transformer_lens.model_bridge import TransformerBridge

    bridge = TransformerBridge.boot_transformers(str(directory), device="cpu")
    bridge.eval()
    return bridge


def load_hf(directory: Path) -> Any:
    import transformers

    model = transformers.AutoModelForCausalLM.from_pretrained(
        str(directory), attn_implementation="eager"
    )
    model.eval()
    return model


def make_tokens(
    vocab_size: int, seq_len: int, windows_per_language: int, *, seed: int = 0
) -> dict[str, torch.Tensor]:
    """Random token ids per language, a whole number of windows each.

    The two "languages" draw from disjoint halves of the vocabulary, so their statistics differ.
    """
    g = torch.Generator().manual_seed(seed)
    half = vocab_size // 2
    n = seq_len * windows_per_language
    return {
        LANGUAGES[0]: torch.randint(4, half, (n,), generator=g),
        LANGUAGES[1]: torch.randint(half, vocab_size, (n,), generator=g),
    }


def as_windows(ids: torch.Tensor, seq_len: int) -> torch.Tensor:
    """``[n]`` token ids as ``[n // seq_len, seq_len]`` windows (the remainder dropped)."""
    n = ids.numel() // seq_len * seq_len
    return ids[:n].view(-1, seq_len)


# --------------------------------------------------------------------------------------------
# the four methods; each returns the active counts [n_layers, d_mlp, lang] or None


def run_forward(models: dict[str, Any], tokens: dict[str, torch.Tensor], s: Settings) -> None:
    bridge = models["bridge"]
    with torch.inference_mode():
        for ids in tokens.values():
            for batch in as_windows(ids, s.seq_len).split(s.batch_size):
                bridge(batch)  # [batch, pos, d_vocab] logits, discarded
    return None


def run_tl_lape(
    models: dict[str, Any], tokens: dict[str, torch.Tensor], s: Settings
) -> torch.Tensor:
    from tl_lape.collection.engine import collect_activation_stats

    stats = collect_activation_stats(
        models["bridge"], tokens, seq_len=s.seq_len, batch_size=s.batch_size, progress=False
    )
    return stats.active_counts


def run_tl_cache(
    models: dict[str, Any], tokens: dict[str, torch.Tensor], s: Settings
) -> torch.Tensor:
    bridge = models["bridge"]
    n_layers, d_mlp = s.model.n_layers, s.model.d_mlp
    names = [f"blocks.{layer}.mlp.hook_pre" for layer in range(n_layers)]
    wanted = set(names)
    counts = torch.zeros(n_layers, d_mlp, len(tokens), dtype=torch.int64)
    sums = torch.zeros(n_layers, d_mlp, len(tokens), dtype=torch.float64)
    with torch.inference_mode():
        for k, ids in enumerate(tokens.values()):
            for batch in as_windows(ids, s.seq_len).split(s.batch_size):
                _, cache = bridge.run_with_cache(batch, names_filter=lambda name: name in wanted)
                for layer, name in enumerate(names):
                    pre = cache[name]  # [batch, pos, d_mlp]
                    counts[layer, :, k] += (pre > 0).sum(dim=(0, 1))  # [d_mlp]
                    act = torch.nn.functional.silu(pre)
                    sums[layer, :, k] += act.sum(dim=(0, 1), dtype=torch.float64)  # [d_mlp]
                del cache
    return counts


def run_hf_hooks(
    models: dict[str, Any], tokens: dict[str, torch.Tensor], s: Settings
) -> torch.Tensor:
    hf = models["hf"]
    mlps = [layer.mlp for layer in hf.model.layers]
    counts = torch.zeros(len(mlps), s.model.d_mlp, len(tokens), dtype=torch.int64)
    sums = torch.zeros(len(mlps), s.model.d_mlp, len(tokens), dtype=torch.float64)
    current = [0]  # index of the language being run

    def count_into(layer: int) -> Callable[..., None]:
        def hook(module: torch.nn.Module, inputs: Any, output: torch.Tensor) -> None:
            k = current[0]
            counts[layer, :, k] += (output > 0).sum(dim=(0, 1))  # [d_mlp]
            sums[layer, :, k] += output.sum(dim=(0, 1), dtype=torch.float64)  # [d_mlp]

        return hook

    handles = [mlp.act_fn.register_forward_hook(count_into(i)) for i, mlp in enumerate(mlps)]
    try:
        with torch.inference_mode():
            for k, ids in enumerate(tokens.values()):
                current[0] = k
                for batch in as_windows(ids, s.seq_len).split(s.batch_size):
                    hf(input_ids=batch, use_cache=False)  # logits discarded
    finally:
        for handle in handles:
            handle.remove()
    return counts


RUNNERS: dict[str, Callable[..., torch.Tensor | None]] = {
    "forward": run_forward,
    "tl_lape": run_tl_lape,
    "tl_cache": run_tl_cache,
    "hf_hooks": run_hf_hooks,
}


# --------------------------------------------------------------------------------------------
# memory measurement (in a fresh process)


def _proc_status_kib(field: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset the peak RSS mark (VmHWM) to the current RSS
    except OSError:
        return False
    return True


def _maxrss_kib() -> int:
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return maxrss // 1024 if sys.platform == "darwin" else maxrss  # bytes on macOS


class PeakMemory:
    """Peak RSS increase over the RSS at ``start()``, in MiB."""

    def start(self) -> None:
        gc.collect()
        self.exact = _reset_peak()
        self.baseline_kib = _proc_status_kib("VmRSS") or _maxrss_kib()

    def stop(self) -> dict[str, Any]:
        peak = _proc_status_kib("VmHWM") if self.exact else None
        if peak is None:
            peak = _maxrss_kib()
        return {
            "peak_increase_mib": (peak - self.baseline_kib) / 1024,
            "peak_rss_mib": peak / 1024,
            "baseline_rss_mib": self.baseline_kib / 1024,
            "peak_source": "VmHWM after clear_refs" if self.exact else "ru_maxrss (not reset)",
        }


def memory_worker(job: dict[str, Any]) -> dict[str, Any]:
    s = settings_from_dict(job["settings"])
    torch.set_num_threads(s.threads)
    directory = Path(job["model_dir"])
    method = job["method"]
    s = Settings(**{**asdict(s), "model": s.model, "batch_size": job["batch_size"]})
    models = (
        {"hf": load_hf(directory)} if method == "hf_hooks" else {"bridge": load_bridge(directory)}
    )
    if method == "tl_lape":
        import tl_lape.collection.engine  # noqa: F401  (imported before the baseline, like the libraries)
    tokens = make_tokens(s.model.vocab_size, s.seq_len, job["windows_per_language"])
    meter = PeakMemory()
    meter.start()
    t0 = time.perf_counter()
    RUNNERS[method](models, tokens, s)
    seconds = time.perf_counter() - t0
    out = meter.stop()
    n_tokens = sum(ids.numel() for ids in tokens.values())
    out.update(
        method=method,
        tokens=n_tokens,
        tokens_per_forward=s.batch_size * s.seq_len,
        batch_size=s.batch_size,
        seconds=seconds,
    )
    return out


def identify_worker(job: dict[str, Any]) -> dict[str, Any]:
    torch.set_num_threads(job["threads"])
    from tl_lape.selection import identify_language_neurons
    from tl_lape.stats import ActivationStats

    n_layers, d_mlp, n_lang = job["shape"]
    tokens_per_language = 100_000_000
    g = torch.Generator().manual_seed(0)
    counts = torch.empty(n_layers, d_mlp, n_lang, dtype=torch.int64)
    for layer in range(n_layers):  # layer by layer, so making the data sets no memory peak
        base = torch.rand(d_mlp, 1, generator=g) ** 3  # [d_mlp, 1]: most neurons fire rarely
        spread = 0.5 + torch.rand(d_mlp, n_lang, generator=g)  # [d_mlp, lang]
        prob = (base * spread).clamp_(max=1.0)  # [d_mlp, lang]
        counts[layer] = (prob * tokens_per_language).to(torch.int64)
    n_tokens = torch.full((n_lang,), tokens_per_language, dtype=torch.int64)
    languages = [f"l{k}" for k in range(n_lang)]
    stats = ActivationStats.from_counts(counts, n_tokens, languages)
    del counts
    meter = PeakMemory()
    meter.start()
    seconds = []
    for _ in range(job["repeats"]):
        t0 = time.perf_counter()
        neurons = identify_language_neurons(stats)
        seconds.append(time.perf_counter() - t0)
        del neurons
    out = meter.stop()
    out.update(shape=[n_layers, d_mlp, n_lang], seconds=seconds, threads=job["threads"])
    return out


#: glibc's malloc moves its mmap threshold as memory is freed, so whether a large tensor is
#: mmapped (and returned on free) or carved from the heap (and kept) depends on the order of
#: earlier frees: peak RSS then varies by tens of MiB from run to run. A fixed threshold makes
#: every large tensor mmapped, so that RSS follows the memory actually in use.
WORKER_ENV = {"MALLOC_MMAP_THRESHOLD_": "131072"}


def run_worker_process(job: dict[str, Any]) -> dict[str, Any]:
    """Run one job in a fresh interpreter and return the JSON it prints on its last line."""
    proc = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(job)],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, **WORKER_ENV},
    )
    if proc.returncode != 0:
        raise RuntimeError(
            f"benchmark worker {job['kind']} failed (exit {proc.returncode}):\n"
            + proc.stderr[-4000:]
        )
    return json.loads(proc.stdout.strip().splitlines()[-1])


def settings_from_dict(d: dict[str, Any]) -> Settings:
    d = dict(d)
    d["model"] = ModelSize(**d["model"])
    d["memory_points"] = tuple(tuple(p) for p in d["memory_points"])
    d["identify_shape"] = tuple(d["identify_shape"])
    return Settings(**d)


# --------------------------------------------------------------------------------------------
# the run


def throughput(
    models: dict[str, Any], tokens: dict[str, torch.Tensor], s: Settings, log: Callable[[str], None]
) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    n_tokens = sum(ids.numel() for ids in tokens.values())
    warm = {lang: ids[: s.seq_len * s.batch_size] for lang, ids in tokens.items()}
    for method in METHODS:  # warm-up: first-call costs stay out of the timings
        RUNNERS[method](models, warm, s)
    times: dict[str, list[float]] = {m: [] for m in METHODS}
    counts: dict[str, torch.Tensor] = {}
    for r in range(s.rounds):
        order = METHODS[r % len(METHODS) :] + METHODS[: r % len(METHODS)]
        for method in order:
            t0 = time.perf_counter()
            result = RUNNERS[method](models, tokens, s)
            times[method].append(time.perf_counter() - t0)
            if result is not None:
                counts[method] = result
            log(f"  round {r + 1}/{s.rounds} {method:9s} {times[method][-1]:7.2f} s")
    out: dict[str, Any] = {"tokens": n_tokens, "methods": {}}
    for method in METHODS:
        paired = [fa / fx for fa, fx in zip(times["forward"], times[method], strict=True)]
        out["methods"][method] = {
            "seconds": times[method],
            "tokens_per_s": n_tokens / statistics.median(times[method]),
            "ratio_to_forward": statistics.median(paired),
            "ratio_min": min(paired),
            "ratio_max": max(paired),
            "ratio_best": min(times["forward"]) / min(times[method]),
        }
    return out, counts


def agreement(counts: dict[str, torch.Tensor]) -> dict[str, int]:
    """Entries of each counting method's counts that differ from ``tl_lape``'s."""
    ref = counts["tl_lape"]
    return {m: int((c != ref).sum()) for m, c in counts.items() if m != "tl_lape"}


def environment(s: Settings) -> dict[str, Any]:
    from importlib.metadata import PackageNotFoundError, version

    import transformers

    try:
        tl_version = version("transformer-lens")
    except PackageNotFoundError:
        tl_version = "?"
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
        cpu = names[0] if names else cpu
    except OSError:
        pass
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "transformer_lens": tl_version,
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "torch_threads": s.threads,
        "load_average_at_start": os.getloadavg() if hasattr(os, "getloadavg") else None,
        "n_params": None,  # filled in once the model is built
    }


def render(result: dict[str, Any]) -> str:
    s = result["settings"]
    m = s["model"]
    env = result["environment"]
    tp = result["throughput"]
    lines = [
        f"# Collection benchmark, CPU, {env['date'][:10]}",
        "",
        f"Model: random-init Llama-style, {env['n_params'] / 1e6:.1f}M parameters "
        f"({m['n_layers']} layers, d_model {m['d_model']}, d_mlp {m['d_mlp']}, "
        f"vocab {m['vocab_size']}), float32, eager attention.",
        f"Tokens: {tp['tokens']} per method per round ({len(LANGUAGES)} languages, windows of "
        f"{s['seq_len']}, batch size {s['batch_size']}); {s['rounds']} rounds, order rotated.",
        f"Machine: {env['cpu']}, {env['cpu_count']} cores (shared), torch threads "
        f"{env['torch_threads']}, load average at start {env['load_average_at_start']}; "
        f"torch {env['torch']}, transformers {env['transformers']}, "
        f"transformer-lens {env['transformer_lens']}.",
        "",
        "## Throughput",
        "",
        "Ratio = time of (a) / time of the method = throughput of the method / throughput of",
        "(a): **above 1 is faster than a plain forward pass**, below 1 slower. Paired per",
        "round, median (min-max) over rounds; and from each method's fastest round (on a",
        "shared machine other processes only ever add time).",
        "",
        "| method | tokens/s (median) | ratio to (a), paired median | min-max "
        "| ratio, best rounds |",
        "|---|---:|---:|---:|---:|",
    ]
    for method in METHODS:
        r = tp["methods"][method]
        lines.append(
            f"| {LABELS[method]} | {r['tokens_per_s']:,.0f} | {r['ratio_to_forward']:.2f} "
            f"| {r['ratio_min']:.2f}-{r['ratio_max']:.2f} | {r['ratio_best']:.2f} |"
        )
    lines += [
        "",
        "Counts agreement with (b) (entries of the `[n_layers, d_mlp, lang]` active counts that "
        "differ): " + ", ".join(f"{k}: {v}" for k, v in result["agreement"].items()) + ".",
        "",
        "## Peak memory against tokens processed",
        "",
        "Each row is a fresh process; peak RSS during the run minus RSS just before it (model",
        "loaded, tokens made). Counts torch's CPU allocations; includes one-time lazy",
        "initialisation of the first forward pass, the same for every row of a method.",
        "Tokens per forward = batch size x window length. (b) accumulates per-layer counters",
        "inside the hooks; (c) holds every layer's `hook_pre` of the current batch in the cache",
        "(plus the logits), dropped after each batch: both are flat in total tokens, and (c)'s",
        "peak grows faster with the tokens per forward pass (caching the whole corpus in one",
        "`run_with_cache` call is the limit where tokens per forward = total tokens).",
        "",
        "| method | tokens | tokens per forward | peak RSS increase (MiB) | seconds |",
        "|---|---:|---:|---:|---:|",
    ]
    for p in result["memory"]:
        lines.append(
            f"| {LABELS[p['method']]} | {p['tokens']} | {p['tokens_per_forward']} "
            f"| {p['peak_increase_mib']:.1f} | {p['seconds']:.1f} |"
        )
    sources = sorted({p["peak_source"] for p in result["memory"]})
    idf = result["identify"]
    med = statistics.median(idf["seconds"])
    lines += [
        "",
        f"Peak source: {', '.join(sources)}; workers run with "
        + ", ".join(f"{k}={v}" for k, v in WORKER_ENV.items())
        + " (glibc: large tensors are mmapped and returned on free, so RSS follows the memory",
        "in use instead of varying by tens of MiB with the order of earlier frees).",
        "",
        "## identify_language_neurons"
        + (" at LLaMA-2-70B size" if idf["shape"] == [80, 28672, 7] else " (small smoke shape)"),
        "",
        f"Random statistics of shape {idf['shape']} (layers, neurons, languages), 1e8 tokens per",
        f"language, default thresholds, {idf['threads']} torch thread(s), own process.",
        "",
        "| calls | seconds (each) | median | peak RSS increase (MiB) | peak RSS (MiB) |",
        "|---:|---|---:|---:|---:|",
        f"| {len(idf['seconds'])} | {', '.join(f'{t:.2f}' for t in idf['seconds'])} "
        f"| {med:.2f} | {idf['peak_increase_mib']:.0f} | {idf['peak_rss_mib']:.0f} |",
        "",
        "Targets: under 2 s and under 2 GB "
        f"({'met' if med < 2 and idf['peak_rss_mib'] < 2048 else 'NOT met'}; "
        "the peak RSS includes the interpreter, torch and the statistics themselves).",
        "",
        f"Total benchmark time: {result['wall_seconds']:.0f} s.",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny model, few tokens: smoke run")
    parser.add_argument(
        "--output-dir",
        type=Path,
        default=None,
        help="where to write <date>-cpu.md/.json (default: benchmarks/results; --quick: nowhere)",
    )
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default 1)")
    parser.add_argument("--rounds", type=int, default=None, help="throughput rounds")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.worker is not None:
        job = json.loads(args.worker)
        out = memory_worker(job) if job["kind"] == "memory" else identify_worker(job)
        print(json.dumps(out))
        return 0

    s = QUICK if args.quick else FULL
    overrides: dict[str, Any] = {}
    if args.threads is not None:
        overrides["threads"] = args.threads
    if args.rounds is not None:
        overrides["rounds"] = args.rounds
    s = Settings(**{**asdict(s), "model": s.model, **overrides})
    s = settings_from_dict(asdict(s))
    output_dir = args.output_dir
    if output_dir is None and not args.quick:
        output_dir = REPO / "benchmarks" / "results"

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    start = time.perf_counter()
    torch.set_num_threads(s.threads)
    torch.manual_seed(0)
    result: dict[str, Any] = {"settings": asdict(s)}
    with tempfile.TemporaryDirectory(prefix="tl_lape_bench_") as tmp:
        model_dir = build_model_dir(s.model, Path(tmp))
        models = {"bridge": load_bridge(model_dir), "hf": load_hf(model_dir)}
        env = environment(s)
        env["n_params"] = sum(p.numel() for p in models["hf"].parameters())
        result["environment"] = env
        tokens = make_tokens(s.model.vocab_size, s.seq_len, s.windows_per_language)
        log(f"throughput: {s.rounds} rounds x {len(METHODS)} methods")
        result["throughput"], counts = throughput(models, tokens, s, log)
        result["agreement"] = agreement(counts)
        del models, counts
        gc.collect()

        result["memory"] = []
        for method, windows, batch_size in s.memory_points:
            log(f"memory: {method}, {windows} windows/language, batch {batch_size}")
            job = {
                "kind": "memory",
                "settings": asdict(s),
                "model_dir": str(model_dir),
                "method": method,
                "windows_per_language": windows,
                "batch_size": batch_size,
            }
            result["memory"].append(run_worker_process(job))

    log(f"identify_language_neurons on {list(s.identify_shape)}")
    result["identify"] = run_worker_process(
        {
            "kind": "identify",
            "shape": list(s.identify_shape),
            "repeats": s.identify_repeats,
            "threads": s.threads,
        }
    )
    result["wall_seconds"] = time.perf_counter() - start

    report = render(result)
    sys.stdout.write(report)
    if output_dir is not None:
        output_dir.mkdir(parents=True, exist_ok=True)
        stem = f"{result['environment']['date'][:10]}-cpu" + ("-quick" if args.quick else "")
        for suffix, text in ((".md", report), (".json", json.dumps(result, indent=2) + "\n")):
            target = output_dir / (stem + suffix)
            tmp_path = target.with_name(target.name + ".tmp")
            tmp_path.write_text(text)
            os.replace(tmp_path, target)
        log(f"wrote {output_dir / stem}.md and .json")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
