"""The whole pipeline on one model, as ``tl-lape demo`` and ``make demo`` run it.

:func:`run_demo` builds the handbook corpus, loads the model, collects statistics, selects the
language neurons and writes a report folder; on a real model it also measures perplexity under
deactivation (against matched random sets) and steers a few prompts. It reads as its steps:

1. :func:`demo_settings`: the budgets of the model's preset with the caller's options applied,
   every option checked before anything is loaded;
2. the corpus (:func:`~tl_lape.sources.corpora.load_debian_handbook`), the model
   (:func:`~tl_lape.sources.models.load_model`);
3. :func:`~tl_lape.collect_activation_stats`, :func:`~tl_lape.identify_language_neurons`;
4. :func:`write_demo_report` (statistics, neuron set, figures, ``summary.md``), with
   :func:`demo_evaluation` and :func:`steering_example` when evaluating.

Everything is written into a temporary folder beside ``out`` and moved into place at the end,
so an interrupted run never leaves new files beside an earlier report's.

Example:
    >>> result = run_demo("demo", out=tmp / "report", progress=False, echo=None)  # doctest: +SKIP
"""

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, cast

import torch

from tl_lape.checks import check_positive_int, check_rate
from tl_lape.collection.engine import collect_activation_stats
from tl_lape.errors import LapeError
from tl_lape.experiments.analysis import neuron_cards
from tl_lape.experiments.evaluation import DEFAULT_MAX_TOKENS_PER_LANGUAGE, run_evaluation
from tl_lape.experiments.reports import (
    format_summary,
    report_page,
    save_figure,
    write_report,
    write_text,
)
from tl_lape.experiments.steering import run_steering_sweep
from tl_lape.formats import atomic_dir, check_report_folder
from tl_lape.interventions.generation import generate_with_hooks
from tl_lape.interventions.hooks import steering_hooks
from tl_lape.judging.identification import LanguageIdentifier
from tl_lape.neurons import LanguageNeurons
from tl_lape.plots import plot_neurons_per_layer, plot_overlap
from tl_lape.selection import identify_language_neurons, lape_scores
from tl_lape.sources.corpora import PAPER_LANGUAGES, load_debian_handbook
from tl_lape.sources.models import (
    GEMMA_3_270M,
    MODEL_ALIASES,
    check_model_source,
    load_model,
    resolve_dtype,
)
from tl_lape.stats import ActivationStats

__all__ = [
    "DEMO_PRESETS",
    "DemoResult",
    "DemoSettings",
    "demo_evaluation",
    "demo_settings",
    "neuron_cards_html",
    "run_demo",
    "steering_example",
    "write_demo_report",
]

#: Where progress lines go: ``print`` by default; ``None`` prints nothing.
Echo = Callable[[str], None] | None


@dataclass(frozen=True)
class DemoSettings:
    """Everything one demo run needs, checked (see :func:`demo_settings`)."""

    model: str
    out: Path
    device: str
    dtype: torch.dtype
    seq_len: int | None
    batch_size: int
    max_tokens_per_language: int
    prepend_bos: bool
    top_rate: float
    filter_rate: float
    activation_bar_ratio: float
    evaluate: bool
    eval_tokens_per_language: int
    eval_seq_len: int | None  # None: the collection's seq_len, within the held-out budget
    eval_random: int
    selectors: tuple[str, ...]
    steer_new_tokens: int
    steering: Literal["example", "sweep"]  # a few prompts, or the library's prompt sets
    progress: bool


#: Budgets per kind of model: a real model (Gemma 3 270M on 2 CPU cores) gets small budgets so
#: that the whole run stays within minutes (scripts/reproduce_gemma.py runs the full-size
#: measurement, docs/model_card_gemma.md); Gemma expects <bos> at the start of every sequence.
#: Each value can be overridden by the option of the same name.
DEMO_PRESETS: dict[str, dict[str, Any]] = {
    "real": {
        "max_tokens_per_language": 2048,
        "prepend_bos": True,
        "evaluate": True,
        "eval_tokens_per_language": 128,
        # 128 held-out tokens per language in windows of 32 (BOS + 31 tokens): 4 windows per
        # language, so each rise gets a bootstrap interval (one window of 128 gives none). It
        # costs what one window of 128 cost (about 124 scored tokens per language and row, 15
        # rows on 7 languages: some 13k tokens, about 7 minutes at the ~30 scored tokens/s of
        # Gemma 3 270M on 2 CPU cores in benchmarks/results/2026-12-04-nll-subsampling); the
        # shorter context raises the NLL itself a little, not the comparison of the rows.
        "eval_seq_len": 32,
        "eval_random": 1,
        "selectors": (),
        "steer_new_tokens": 24,
        "steering": "example",
    },
    "demo": {
        "max_tokens_per_language": 60_000,
        "prepend_bos": False,
        "evaluate": False,
        "eval_tokens_per_language": DEFAULT_MAX_TOKENS_PER_LANGUAGE,
        "eval_seq_len": None,
        "eval_random": 3,
        "selectors": ("lap", "lave"),
        "steer_new_tokens": 32,
        "steering": "sweep",
    },
}


@dataclass(frozen=True)
class DemoResult:
    """What :func:`run_demo` made: the statistics, the neuron set and the report's text."""

    stats: ActivationStats
    neurons: LanguageNeurons
    out: Path
    summary: str
    sections: tuple[str, ...]
    seconds: float


def demo_settings(
    model: str = GEMMA_3_270M,
    *,
    out: str | Path = "lape_report",
    device: str = "cpu",
    dtype: str = "auto",
    seq_len: int | None = None,
    batch_size: int = 8,
    max_tokens_per_language: int | None = None,
    top_rate: float = 0.01,
    filter_rate: float = 0.95,
    activation_bar_ratio: float = 0.95,
    evaluate: bool | None = None,
    eval_tokens_per_language: int | None = None,
    eval_random: int | None = None,
    steer_new_tokens: int | None = None,
    progress: bool = True,
    overwrite: bool = False,
) -> DemoSettings:
    """The demo's settings: the model's preset (:data:`DEMO_PRESETS`) with the given options
    on top (``None`` keeps the preset's value), every option checked before anything loads.

    ``model="demo"`` takes the ``"demo"`` preset, any other model the ``"real"`` one. ``out``
    follows the output rule of :func:`tl_lape.formats.check_report_folder`: an existing
    non-empty folder that tl_lape did not write needs ``overwrite=True``, and a model folder
    may not be or hold it.

    Example:
        >>> demo_settings("demo").max_tokens_per_language
        60000
    """
    preset = dict(DEMO_PRESETS["demo" if model == "demo" else "real"])
    given = {
        "max_tokens_per_language": max_tokens_per_language,
        "evaluate": evaluate,
        "eval_tokens_per_language": eval_tokens_per_language,
        "eval_random": eval_random,
        "steer_new_tokens": steer_new_tokens,
    }
    preset.update({k: v for k, v in given.items() if v is not None})
    for name in ("top_rate", "filter_rate", "activation_bar_ratio"):
        check_rate(locals()[name], name)
    if seq_len is not None:
        check_positive_int(seq_len, "seq_len")
    check_positive_int(batch_size, "batch_size")
    for name in ("max_tokens_per_language", "eval_tokens_per_language", "steer_new_tokens"):
        check_positive_int(preset[name], name)
    eval_random = preset["eval_random"]
    if isinstance(eval_random, bool) or not isinstance(eval_random, int) or eval_random < 0:
        raise LapeError(
            f"eval_random must be an int >= 0 (matched random draws; 0: none); received "
            f"{eval_random!r}; pass e.g. 3"
        )
    inputs = [("model", Path(model).expanduser())] if model not in MODEL_ALIASES else []
    out = check_report_folder(out, overwrite=overwrite, inputs=inputs)
    check_model_source(model, device=device)
    return DemoSettings(
        model=model,
        out=out,
        device=device,
        dtype=resolve_dtype(dtype, device),
        seq_len=seq_len,
        batch_size=batch_size,
        top_rate=top_rate,
        filter_rate=filter_rate,
        activation_bar_ratio=activation_bar_ratio,
        progress=progress,
        **preset,
    )


def run_demo(
    model: str | DemoSettings = GEMMA_3_270M, *, echo: Echo = print, **options: Any
) -> DemoResult:
    """Run the whole pipeline on ``model`` and write the report folder ``out``.

    Args:
        model: A model name for :func:`~tl_lape.sources.models.load_model` (default: Gemma 3
            270M; ``"demo"`` is the small model tl_lape ships), or settings from
            :func:`demo_settings`.
        echo: Receives one line per step (default ``print``; ``None``: silent).
        **options: The keyword options of :func:`demo_settings` (``out``, ``device``, ...).

    Returns:
        A :class:`DemoResult`.
    """
    settings = model if isinstance(model, DemoSettings) else demo_settings(model, **options)
    if isinstance(model, DemoSettings) and options:
        raise LapeError(
            f"run_demo got settings and options {sorted(options)}; apply the options with "
            "dataclasses.replace(settings, ...) or pass a model name"
        )
    say = echo if echo is not None else (lambda line: None)
    started = time.perf_counter()
    steps = 6 if settings.evaluate else 4
    say(f"[1/{steps}] building the handbook corpus (cached after the first run)")
    corpus = load_debian_handbook(languages=PAPER_LANGUAGES, split="train")
    dtype_name = str(settings.dtype).removeprefix("torch.")
    say(f"[2/{steps}] loading {settings.model} ({dtype_name})")
    t0 = time.perf_counter()
    lm = load_model(settings.model, device=settings.device, dtype=settings.dtype)
    times = {"load": time.perf_counter() - t0}
    say(f"[3/{steps}] collecting activation statistics")
    t0 = time.perf_counter()
    stats = collect_activation_stats(
        lm,
        corpus,
        seq_len=settings.seq_len,
        batch_size=settings.batch_size,
        max_tokens_per_language=settings.max_tokens_per_language,
        prepend_bos=settings.prepend_bos,
        progress=settings.progress,
    )
    times["collect"] = time.perf_counter() - t0
    say(f"[4/{steps}] identifying language neurons and writing the report")
    neurons = identify_language_neurons(
        stats,
        top_rate=settings.top_rate,
        filter_rate=settings.filter_rate,
        activation_bar_ratio=settings.activation_bar_ratio,
    )
    with atomic_dir(settings.out) as tmp:
        summary, sections = write_demo_report(
            lm, neurons, stats, tmp, settings, times=times, started=started, echo=say
        )
    return DemoResult(
        stats=stats,
        neurons=neurons,
        out=settings.out,
        summary=summary,
        sections=tuple(sections),
        seconds=time.perf_counter() - started,
    )


def write_demo_report(
    model: Any,
    neurons: LanguageNeurons,
    stats: ActivationStats,
    out: Path,
    settings: DemoSettings,
    *,
    times: dict[str, float],
    started: float,
    echo: Callable[[str], None],
) -> tuple[str, list[str]]:
    """Write the demo report's files into ``out``; return its summary and sections."""
    stats.save(out / "stats.safetensors")
    neurons.save(out / "neurons.json")
    save_figure(plot_neurons_per_layer(neurons), out / "neurons_per_layer.png")
    save_figure(plot_overlap(neurons), out / "overlap.png")
    summary = format_summary(neurons, stats=stats)
    files = ["stats.safetensors", "neurons.json", "neurons_per_layer.png", "overlap.png"]
    sections: list[str] = []
    if settings.evaluate:
        sections = demo_evaluation(model, neurons, stats, out, settings, files=files, echo=echo)
    elapsed = time.perf_counter() - started
    about = (
        "the embedded demo model"
        if settings.model == "demo"
        else f"{settings.model} ({str(settings.dtype).removeprefix('torch.')})"
    )
    header = (
        f"Model: {about}, {stats.n_layers} layers x {stats.d_mlp} MLP neurons. "
        "Corpus: the Debian Administrator's Handbook, train split "
        f"({settings.max_tokens_per_language:,} tokens per language at most)."
    )
    files += ["summary.md", "report.html"]
    footer = (
        f"Files: {', '.join(files)}.\n"
        f"Wall time: {elapsed:.1f} s (model load {times['load']:.1f} s, statistics "
        f"{times['collect']:.1f} s)."
    )
    sections_md = "".join(f"{section}\n" for section in sections)
    text = f"# tl-lape demo report\n\n{header}\n\n{summary}\n\n{sections_md}{footer}\n"
    write_text(out / "summary.md", text)
    html = report_page(
        out,
        title="tl-lape demo report",
        intro=f"{header}\n\n{footer}",
        neurons=neurons,
        stats=stats,
        sections=sections,
        files=files,
        views=[("Neuron cards", neuron_cards_html(model, neurons, stats))],
    )
    write_text(out / "report.html", html)
    return summary, sections


def neuron_cards_html(model: Any, neurons: LanguageNeurons, stats: ActivationStats) -> str:
    """The card of each language's most specific neuron (its lowest LAPE): firing rate per
    language and the tokens it promotes and suppresses, from the statistics and the weights
    (no forward pass)."""
    scores = lape_scores(stats)  # n_layers d_mlp
    picks: list[tuple[str, int, int]] = []
    for lang in neurons.languages:
        candidates = [
            (float(scores[layer, int(i)]), layer, int(i))
            for layer in range(neurons.n_layers)
            for i in neurons.indices(lang, layer)
        ]
        if candidates:
            _, layer, index = min(candidates)
            picks.append((lang, layer, index))
    if not picks:
        return "<p>No language has a neuron in this set.</p>"
    made = neuron_cards(
        model, [(layer, index) for _, layer, index in picks], stats=stats, neurons=neurons, k=8
    )
    cards = [
        f"<h3>{lang}: neuron {layer}.{index}</h3>{card.to_html()}"
        for (lang, layer, index), card in zip(picks, made, strict=True)
    ]
    return "".join(cards)


#: The steering configuration of the demo model's sweep: `add` x10 at 5% of neurons with the
#: other languages' neurons switched off. Of the configurations rerun on fresh prompts
#: (docs/model_card.md) it reached the most targets over both prompt settings together.
DEMO_SWEEP: dict[str, Any] = {
    "modes": ("add",),
    "strengths": {"add": (10.0,)},
    "top_rates": (0.05,),
    "settings": ("english", "neutral"),
    "deactivate": "others",
}


def demo_evaluation(
    model: Any,
    neurons: LanguageNeurons,
    stats: ActivationStats,
    out: Path,
    settings: DemoSettings,
    *,
    files: list[str],
    echo: Callable[[str], None],
) -> list[str]:
    """Perplexity under deactivation and steering, on the held-out split; returns sections."""
    echo("[5/6] evaluating: perplexity under deactivation (held-out split)")
    heldout = load_debian_handbook(languages=stats.languages, split="heldout")
    # Evaluation windows as long as the collection's (or the preset's eval_seq_len), within the
    # held-out budget; every rise is reported with its paired bootstrap interval.
    eval_tokens = settings.eval_tokens_per_language
    evaluation = run_evaluation(
        model,
        neurons,
        heldout,
        stats=stats,
        n_random=settings.eval_random,
        selectors=settings.selectors,
        seq_len=min(settings.eval_seq_len or int(stats.metadata["seq_len"]), eval_tokens),
        batch_size=settings.batch_size,
        max_tokens_per_language=eval_tokens,
        progress=settings.progress,
    )
    evaluation_text = write_report(evaluation, out, "evaluation", markdown=False, files=files)
    if settings.steering == "example":
        echo("[6/6] steering a few English prompts")
        steering_text = steering_example(model, neurons, stats, settings.steer_new_tokens)
        write_text(out / "steering_example.md", steering_text)
        files.append("steering_example.md")
        return [evaluation_text, steering_text]
    echo("[6/6] steering generation sweep")
    steering = run_steering_sweep(
        model,
        stats,
        reference_corpus={lang: list(texts) for lang, texts in heldout.items()},
        progress=settings.progress,
        max_new_tokens=settings.steer_new_tokens,
        **DEMO_SWEEP,
    )
    steering_text = write_report(steering, out, "steering", markdown=False, files=files)
    return [evaluation_text, steering_text]


#: The short steering example of the demo on a real model: English prompts, the English
#: neurons switched off and the target's set to `strength` times their mean activation on the
#: target's text, at the generated tokens only. docs/model_card_gemma.md says how it was chosen.
EXAMPLE_PROMPTS: tuple[str, ...] = (
    "The package manager downloads",
    "To configure the network, the administrator",
    "The weather today is",
)
EXAMPLE_TARGETS: tuple[str, ...] = ("fr", "es", "zh")
EXAMPLE_STEERING: dict[str, Any] = {"mode": "replace", "strength": 2.0, "deactivate": ["en"]}


def steering_example(
    model: Any,
    neurons: LanguageNeurons,
    stats: ActivationStats,
    max_new_tokens: int,
    *,
    prompts: Sequence[str] = EXAMPLE_PROMPTS,
    targets: Sequence[str] = EXAMPLE_TARGETS,
) -> str:
    """Greedy continuations of a few English prompts, unsteered and steered to each target,
    as a Markdown table with the language py3langid reads in each."""
    targets = [t for t in targets if t in neurons.languages and t in stats.languages]
    identifier = LanguageIdentifier(list(stats.languages), open_set=False)
    prompts = list(prompts)
    outputs: dict[str, list[str]] = {
        "-": cast(list[str], generate_with_hooks(model, prompts, max_new_tokens=max_new_tokens))
    }
    for target in targets:
        hooks = steering_hooks(
            neurons, stats, target, **EXAMPLE_STEERING, positions="new", model=model
        )
        outputs[target] = cast(
            list[str],
            generate_with_hooks(model, prompts, fwd_hooks=hooks, max_new_tokens=max_new_tokens),
        )
    config = ", ".join(f"{k}={v!r}" for k, v in EXAMPLE_STEERING.items())
    lines = [
        "### Steering example",
        "",
        f"Greedy continuations ({max_new_tokens} tokens) of English prompts, unsteered (target "
        f"'-') and steered with `steering_hooks(..., {config}, positions='new')`; the last "
        "column is the language py3langid reads in the continuation.",
        "",
        "| prompt | target | continuation | language |",
        "| --- | --- | --- | --- |",
    ]
    for target, texts in outputs.items():
        for prompt, text in zip(prompts, texts, strict=True):
            shown = " ".join(text.split()).replace("|", "\\|")
            judged = (identifier(text) if text.strip() else None) or "-"
            lines.append(f"| {prompt} | {target} | {shown} | {judged} |")
    return "\n".join(lines) + "\n"
