"""The ``tl-lape`` command line.

Its subcommands are ``collect`` (a model and a corpus to a statistics file), ``identify`` (a
statistics file to a neuron-set file), ``evaluate`` (perplexity under deactivation of each
language's neurons, against matched random sets), ``steer`` (a sweep of steering generation
toward each language, judged by language identification and fluency, against matched random
sets) and ``demo`` (the whole pipeline on the embedded demo model and the handbook corpus,
written to a report folder; ``--evaluate`` adds the evaluation and a steering sweep).

Run ``tl-lape SUBCOMMAND --help`` for the options of each. Errors in the input are reported
on one line and exit with status 2; nothing is written when the input is bad. Options, paths and
the output target are checked first, then the input files, then the model, all before any
computation. A run's outputs appear together or not at all: files are written beside their
target and moved into place at the end, report folders are built in a temporary folder beside
``--out``. Ctrl-C ends a run with the one line ``interrupted`` and status 130, leaving no output.
"""

import argparse
import dataclasses
import logging
import math
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import torch

from tl_lape.errors import LapeError
from tl_lape.formats import (
    atomic_dir,
    atomic_path,
    atomic_paths,
    check_output_file,
    check_output_folder,
)

if TYPE_CHECKING:
    from tl_lape.neurons import LanguageNeurons
    from tl_lape.stats import ActivationStats

__all__ = ["main"]

log = logging.getLogger("tl_lape")

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _dtype(name: str, device: str) -> torch.dtype:
    """The dtype of a --dtype value; ``auto`` is bfloat16 where it is fast, float32 elsewhere."""
    if name != "auto":
        return _DTYPES[name]
    from tl_lape.sources.models import fast_dtype

    return fast_dtype(device)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``tl-lape`` console script.

    Args:
        argv: The arguments (default: ``sys.argv[1:]``).

    Returns:
        The exit status: 0 on success, 2 on bad input, 130 when interrupted (Ctrl-C).
    """
    parser = _build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="%(message)s"
    )
    try:
        return int(args.func(args) or 0)
    except LapeError as error:
        print(f"tl-lape {args.command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        checkpoint = getattr(args, "resume", None)
        if checkpoint is not None and Path(checkpoint).is_file():
            message = f"interrupted; run the same command again to resume from {checkpoint}"
        else:
            message = "interrupted; nothing was written"
        print(f"tl-lape {args.command}: {message}", file=sys.stderr)
        return 130


# ----------------------------------------------------------------------------- parser


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tl-lape",
        description="Find and control language-specific neurons (LAPE) in TransformerLens models.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress messages")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    collect = sub.add_parser("collect", help="collect per-language activation statistics")
    _add_model_options(collect)
    _add_corpus_options(collect)
    _add_collect_options(collect)
    collect.add_argument("--out", required=True, type=Path, help="statistics file to write")
    collect.add_argument(
        "--resume",
        type=Path,
        default=None,
        metavar="CHECKPOINT",
        help="checkpoint file: written every --checkpoint-every windows, and resumed from when "
        "it exists (run the same command again after a crash; delete it to start afresh)",
    )
    collect.add_argument(
        "--checkpoint-every",
        type=int,
        default=1000,
        help="windows between checkpoints with --resume (default: 1000)",
    )
    collect.add_argument(
        "--prepend-bos",
        action="store_true",
        help="start every window with the tokenizer's BOS token (not counted); models such as "
        "Gemma expect it",
    )
    collect.add_argument(
        "--residual-means",
        type=Path,
        default=None,
        metavar="FILE",
        help="also write the per-language residual-stream means (for DiffMean steering, "
        "`steer --study --means FILE`), collected in the same pass",
    )
    collect.set_defaults(func=_cmd_collect)

    identify = sub.add_parser("identify", help="select language neurons from statistics")
    identify.add_argument("stats", type=Path, help="statistics file written by `collect`")
    _add_threshold_options(identify)
    identify.add_argument("--out", required=True, type=Path, help="neuron-set file (JSON)")
    identify.add_argument(
        "--rucaibox", type=Path, default=None, help="also write the paper's .neuron.pth format"
    )
    identify.set_defaults(func=_cmd_identify)

    evaluate = sub.add_parser(
        "evaluate", help="perplexity under deactivation, with matched random controls"
    )
    evaluate.add_argument("neurons", type=Path, help="neuron-set file written by `identify`")
    _add_model_options(evaluate)
    _add_corpus_options(evaluate)
    evaluate.set_defaults(split="heldout")
    evaluate.add_argument(
        "--stats", type=Path, default=None, help="statistics file, to also compare LAP and LAVE"
    )
    evaluate.add_argument("--n-random", type=int, default=3, help="matched random draws")
    evaluate.add_argument("--seed", type=int, default=0, help="seed of the random draws")
    _add_collect_options(evaluate, default_max_tokens=4096)
    evaluate.add_argument("--out", required=True, type=Path, help="report folder")
    evaluate.set_defaults(func=_cmd_evaluate)

    steer = sub.add_parser(
        "steer", help="steering generation sweep toward each language, with random controls"
    )
    steer.add_argument(
        "stats",
        type=Path,
        help="statistics file written by `collect` (the neurons are "
        "selected from it at each --top-rates budget)",
    )
    _add_model_options(steer)
    _add_steer_options(steer)
    steer.add_argument(
        "--reference-corpus",
        default="handbook",
        help="held-out text for the fluency yardstick: 'handbook' (its held-out split), "
        "'text:DIR', 'hf:DATASET' or 'none' (fluency then checks repetition only)",
    )
    steer.add_argument(
        "--hf-config", default="{lang}", help="dataset config per language, with {lang}"
    )
    study = steer.add_argument_group(
        "study",
        "--study runs the steering study instead of the sweep: LAPE against random sets, "
        "DiffMean and prompting, chosen on development prompts and reported on fresh ones, "
        "judged by two language identifiers, fluency and (on the handbook) content",
    )
    study.add_argument("--study", action="store_true", help="run the steering study")
    study.add_argument(
        "--means",
        type=Path,
        default=None,
        help="residual-means file (`collect --residual-means`) for the DiffMean baseline "
        "(default: no DiffMean)",
    )
    study.add_argument(
        "--n-random", type=int, default=None, help="random draws on the fresh prompts (default: 3)"
    )
    study.add_argument(
        "--n-content",
        type=int,
        default=None,
        help="handbook content prompts per phase (default: 8; 0: no content setting)",
    )
    study.add_argument(
        "--diffmean-layers", default=None, help="comma-separated layers (default: n/4, n/2, 3n/4)"
    )
    study.add_argument(
        "--diffmean-strengths",
        default=None,
        help="comma-separated DiffMean strengths (default: 0.5,1,2)",
    )
    steer.add_argument("--no-progress", action="store_true", help="hide progress bars")
    steer.add_argument("--out", required=True, type=Path, help="report folder")
    steer.set_defaults(func=_cmd_steer)

    demo = sub.add_parser(
        "demo",
        help="run the whole pipeline on a model (default: Gemma 3 270M) and the handbook corpus",
    )
    demo.add_argument(
        "--model",
        default="gemma-3-270m",
        help=_MODEL_HELP + " (default: gemma-3-270m; 'demo' is the fast small model)",
    )
    demo.add_argument("--out", type=Path, default=Path("lape_report"), help="report folder")
    _add_collect_options(
        demo, default_max_tokens=None, max_tokens_help="(default: 2048; 60000 for --model demo)"
    )
    _add_threshold_options(demo)
    demo.add_argument("--device", default="cpu", help="torch device (default: cpu)")
    _add_dtype_option(demo, default="auto")
    demo.add_argument(
        "--evaluate",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="also measure perplexity under deactivation on the held-out split, against matched "
        "random sets, and steer (default: on, off for --model demo)",
    )
    demo.add_argument(
        "--eval-tokens-per-language",
        type=int,
        default=None,
        help="held-out tokens per language for the perplexity matrices (default: 128; 4096 "
        "for --model demo); windows are no longer than this",
    )
    demo.add_argument(
        "--eval-random",
        type=int,
        default=None,
        help="matched random draws for the evaluation (default: 1; 3 for --model demo)",
    )
    demo.add_argument(
        "--steer-new-tokens",
        type=int,
        default=None,
        help="tokens generated per prompt when steering (default: 24; 32 for --model demo)",
    )
    demo.set_defaults(func=_cmd_demo)
    return parser


def _add_model_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model",
        required=True,
        help=_MODEL_HELP,
    )
    parser.add_argument("--device", default="cpu", help="torch device (default: cpu)")
    _add_dtype_option(parser, default="float32")


_MODEL_HELP = (
    "'gemma-3-270m' (Gemma 3 270M, from the gemma extra), 'demo' (the small embedded model), "
    "a .gguf file, a local Hugging Face folder, or a hub name for TransformerLens"
)


def _add_dtype_option(parser: argparse.ArgumentParser, *, default: str) -> None:
    parser.add_argument(
        "--dtype",
        default=default,
        choices=sorted([*_DTYPES, "auto"]),
        help=f"model dtype; 'auto' is bfloat16 on a GPU or a CPU with AMX, else float32 "
        f"(default: {default})",
    )


def _add_corpus_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--corpus",
        default="handbook",
        help="'handbook' (the Debian Administrator's Handbook), 'text:DIR' (DIR/<lang>.txt), "
        "or 'hf:DATASET' with --hf-config (a Hugging Face dataset through `datasets`)",
    )
    parser.add_argument(
        "--languages",
        default=None,
        help="comma-separated language codes (default: the paper's en,zh,fr,es,vi,id,ja)",
    )
    parser.add_argument("--split", default="train", help="handbook split: train, heldout or all")
    parser.add_argument(
        "--hf-config",
        default="{lang}",
        help="dataset config name per language, with {lang} (e.g. '20231101.{lang}')",
    )


def _add_collect_options(
    parser: argparse.ArgumentParser,
    *,
    default_max_tokens: int | None = None,
    max_tokens_help: str | None = None,
) -> None:
    parser.add_argument("--seq-len", type=int, default=256, help="tokens per window")
    parser.add_argument("--batch-size", type=int, default=8, help="windows per forward pass")
    parser.add_argument(
        "--max-tokens-per-language",
        type=int,
        default=default_max_tokens,
        help="token budget per language "
        + (
            max_tokens_help
            or (f"(default: {default_max_tokens})" if default_max_tokens else "(default: all)")
        ),
    )
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")


def _add_steer_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--targets", default=None, help="comma-separated target languages (default: all but en)"
    )
    parser.add_argument(
        "--modes", default="replace,add,scale", help="comma-separated steering modes"
    )
    parser.add_argument(
        "--strengths",
        action="append",
        default=None,
        metavar="MODE=V[,V...]",
        help="strengths of one mode, e.g. add=5,10 (repeat per mode; default for the sweep: "
        "replace=1,4,8 add=5,10 scale=3,10; for --study: replace=1,2,3 add=1,2,4 scale=2,4)",
    )
    parser.add_argument(
        "--top-rates", default="0.01,0.02,0.05", help="comma-separated neuron budgets"
    )
    parser.add_argument(
        "--settings",
        default=None,
        help="prompt settings of the sweep: english and/or neutral (default: both)",
    )
    parser.add_argument(
        "--deactivate",
        default=None,
        choices=("none", "others", "source"),
        help="other languages' neurons switched off in the same pass (default: none; the "
        "study sweeps none and others)",
    )
    parser.add_argument(
        "--seed", type=int, default=None, help="seed of the sweep's random sets (default: 0)"
    )
    parser.add_argument("--max-new-tokens", type=int, default=32, help="tokens per output")
    parser.add_argument(
        "--generation-batch-size", type=int, default=256, help="rows per generation batch"
    )


def _add_threshold_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--top-rate", type=float, default=0.01, help="share of neurons selected")
    parser.add_argument(
        "--filter-rate", type=float, default=0.95, help="quantile of the firing filter"
    )
    parser.add_argument(
        "--activation-bar-ratio",
        type=float,
        default=0.95,
        help="quantile above which a neuron belongs to a language",
    )


# ----------------------------------------------------------------------------- commands


def _cmd_collect(args: argparse.Namespace) -> int:
    from tl_lape.collection.checkpoint import collect_activation_stats_resumable
    from tl_lape.collection.engine import collect_activation_stats

    check_output_file(args.out, "statistics file")
    _check_collect_sizes(args)
    if args.resume is not None:
        check_output_file(args.resume, "checkpoint")
        _check_at_least_one(args, ("checkpoint_every",))
    if args.residual_means is not None:
        check_output_file(args.residual_means, "residual-means file")
        if Path(args.residual_means).resolve() == Path(args.out).resolve():
            raise LapeError(
                f"--out and --residual-means name the same file {str(args.out)!r}; give two paths"
            )
        if args.resume is not None:
            raise LapeError(
                "--residual-means does not work with --resume (a checkpoint keeps the firing "
                "counts only); drop one of them"
            )
    _check_model_source(args.model, args.device)
    corpus = _load_corpus(args.corpus, args.languages, args.split, args.hf_config)
    model = _load_model(args.model, args.device, _dtype(args.dtype, args.device))
    window_kwargs: dict[str, Any] = {
        "seq_len": args.seq_len,
        "batch_size": args.batch_size,
        "max_tokens_per_language": args.max_tokens_per_language,
        "prepend_bos": args.prepend_bos,
        "progress": not args.no_progress,
    }
    if args.resume is not None:
        stats = collect_activation_stats_resumable(
            model, corpus, args.resume, checkpoint_every=args.checkpoint_every, **window_kwargs
        )
    elif args.residual_means is not None:
        from tl_lape.interventions.diffmean import collect_stats_and_residual_means

        stats, means = collect_stats_and_residual_means(model, corpus, **window_kwargs)
        with atomic_paths([args.out, args.residual_means]) as (stats_tmp, means_tmp):
            stats.save(stats_tmp)  # both files are moved into place together, or neither
            means.save(means_tmp)
    else:
        stats = collect_activation_stats(model, corpus, **window_kwargs)
    if args.residual_means is None:
        stats.save(args.out)
    tokens = ", ".join(
        f"{lang} {int(n):,}" for lang, n in zip(stats.languages, stats.n_tokens, strict=True)
    )
    print(f"wrote {args.out}: {stats.n_layers} layers x {stats.d_mlp} neurons; tokens: {tokens}")
    return 0


def _cmd_identify(args: argparse.Namespace) -> int:
    from tl_lape.selection import identify_language_neurons
    from tl_lape.stats import ActivationStats

    targets = [check_output_file(args.out, "neuron-set file")]
    if args.rucaibox is not None:
        targets.append(check_output_file(args.rucaibox, "--rucaibox file"))
        if targets[1].resolve() == targets[0].resolve():
            raise LapeError(
                f"--out and --rucaibox name the same file {str(args.out)!r}; give two paths"
            )
    stats = ActivationStats.load(args.stats)
    neurons = identify_language_neurons(
        stats,
        top_rate=args.top_rate,
        filter_rate=args.filter_rate,
        activation_bar_ratio=args.activation_bar_ratio,
    )
    # Both files, or neither: each is written beside its target, then both are moved into place.
    with atomic_paths(targets) as tmps:
        neurons.save(tmps[0])
        if args.rucaibox is not None:
            neurons.to_rucaibox(tmps[1])
    print(f"wrote {args.out}" + (f" and {args.rucaibox}" if args.rucaibox is not None else ""))
    print(format_summary(neurons))
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from tl_lape.experiments.evaluation import run_evaluation
    from tl_lape.neurons import LanguageNeurons
    from tl_lape.stats import ActivationStats

    _check_report_folder(args.out)
    _check_collect_sizes(args)
    if args.n_random < 0:
        raise LapeError(f"--n-random must be 0 or more, got {args.n_random}.")
    _check_model_source(args.model, args.device)
    neurons = LanguageNeurons.load(args.neurons)
    stats = ActivationStats.load(args.stats) if args.stats is not None else None
    if stats is not None:
        _check_stats_cover(neurons, args.neurons, stats, args.stats)
    languages = args.languages if args.languages is not None else ",".join(neurons.languages)
    corpus = _load_corpus(args.corpus, languages, args.split, args.hf_config)
    model = _load_model(args.model, args.device, _dtype(args.dtype, args.device))
    report = run_evaluation(
        model,
        neurons,
        corpus,
        stats=stats,
        n_random=args.n_random,
        seed=args.seed,
        seq_len=args.seq_len,
        batch_size=args.batch_size,
        max_tokens_per_language=args.max_tokens_per_language,
        progress=not args.no_progress,
    )
    with atomic_dir(args.out) as tmp:
        text = _write_report(report, tmp, "evaluation")
    print(text)
    print(f"\nreport written to {args.out}/")
    return 0


def _cmd_steer(args: argparse.Namespace) -> int:
    from tl_lape.stats import ActivationStats

    _check_report_folder(args.out)
    if args.study:
        return _cmd_steer_study(args)
    study_only = [
        opt
        for opt, value in (
            ("--means", args.means),
            ("--n-random", args.n_random),
            ("--n-content", args.n_content),
            ("--diffmean-layers", args.diffmean_layers),
            ("--diffmean-strengths", args.diffmean_strengths),
        )
        if value is not None
    ]
    if study_only:
        raise LapeError(f"{', '.join(study_only)} only apply with --study; add --study")
    sweep_kwargs = _steer_kwargs(args)
    _check_model_source(args.model, args.device)
    stats = ActivationStats.load(args.stats)
    reference = None
    if args.reference_corpus != "none":
        reference = _load_corpus(
            args.reference_corpus, ",".join(stats.languages), "heldout", args.hf_config
        )
    model = _load_model(args.model, args.device, _dtype(args.dtype, args.device))
    report = _run_sweep(model, stats, reference, sweep_kwargs, progress=not args.no_progress)
    with atomic_dir(args.out) as tmp:
        text = _write_report(report, tmp, "steering")
    print(text)
    print(f"\nreport written to {args.out}/")
    return 0


def _cmd_steer_study(args: argparse.Namespace) -> int:
    """``steer --study``: :func:`~tl_lape.experiments.steering_study.run_steering_study`, its
    report folder."""
    from tl_lape.experiments.steering_study import (
        DEFAULT_STRENGTHS,
        check_study_inputs,
        run_steering_study,
    )
    from tl_lape.interventions.diffmean import ResidualMeans
    from tl_lape.stats import ActivationStats

    sweep_only = [
        opt
        for opt, value in (("--seed", args.seed), ("--settings", args.settings))
        if value is not None
    ]
    if sweep_only:
        raise LapeError(
            f"{', '.join(sweep_only)} apply to the sweep only; --study uses its own prompt "
            "settings and random draws 0..--n-random-1"
        )
    sweep = _steer_kwargs(args)
    if args.deactivate == "source":
        raise LapeError(
            "--study sweeps --deactivate none and others; 'source' is for the sweep only"
        )
    if args.reference_corpus == "none":
        raise LapeError(
            "--study needs held-out text for its fluency judge; give --reference-corpus "
            "(handbook, text:DIR or hf:DATASET), not 'none'"
        )
    n_content = 8 if args.n_content is None else args.n_content
    if n_content == 1 or n_content < 0:
        raise LapeError(
            f"--n-content must be 0 (no content setting) or at least 2, got {n_content}."
        )
    layers = None
    if args.diffmean_layers is not None:
        items = _split_list(args.diffmean_layers, "--diffmean-layers")
        if not all(v.isdigit() for v in items):
            raise LapeError(
                f"--diffmean-layers takes comma-separated layer numbers, got "
                f"{args.diffmean_layers!r}."
            )
        layers = tuple(int(v) for v in items)
    diff_strengths = _floats(
        _split_list(args.diffmean_strengths or "0.5,1,2", "--diffmean-strengths"),
        "--diffmean-strengths",
    )
    modes = sweep["modes"]
    unknown = [m for m in modes if m not in DEFAULT_STRENGTHS]
    if unknown:
        raise LapeError(f"--modes must be among {list(DEFAULT_STRENGTHS)}, got {unknown}.")
    given = sweep.get("strengths", {})
    missing = [m for m in given if m not in modes]
    if missing:
        raise LapeError(f"--strengths names mode(s) {missing} that --modes {list(modes)} omits.")
    strengths = {m: given.get(m, DEFAULT_STRENGTHS[m]) for m in modes}
    _check_model_source(args.model, args.device)
    stats = ActivationStats.load(args.stats)
    means = ResidualMeans.load(args.means) if args.means is not None else None
    reference = _load_corpus(
        args.reference_corpus, ",".join(stats.languages), "heldout", args.hf_config
    )
    parallel: list[dict[str, str]] = []
    if args.reference_corpus == "handbook" and n_content > 0:
        from tl_lape.sources.corpora import load_handbook_parallel

        parallel = load_handbook_parallel(stats.languages, split="heldout")
    options: dict[str, Any] = {
        "reference_corpus": {lang: list(texts) for lang, texts in reference.items()},
        "parallel": parallel,
        "targets": sweep.get("targets"),
        "n_content": max(2, n_content),
        "top_rates": sweep["top_rates"],
        "strengths": strengths,
        "deactivate": (args.deactivate,) if args.deactivate else ("none", "others"),
        "diffmean_layers": layers,
        "diffmean_strengths": diff_strengths,
        "n_random": 3 if args.n_random is None else args.n_random,
    }
    check_study_inputs(stats, means, **options)  # everything but the model, before loading it
    model = _load_model(args.model, args.device, _dtype(args.dtype, args.device))
    study = run_steering_study(
        model,
        stats,
        means,
        max_new_tokens=sweep["max_new_tokens"],
        batch_size=sweep["batch_size"],
        progress=not args.no_progress,
        **options,
    )
    study.save(args.out)
    print(study.to_markdown())
    print(f"\nreport written to {args.out}/")
    return 0


def _write_report(
    report: Any, out: Path, stem: str, *, markdown: bool = True, files: list[str] | None = None
) -> str:
    """Write a report's figures, ``<stem>.json`` and (with ``markdown``) ``<stem>.md`` to ``out``.

    Each file is written atomically; the names written are appended to ``files`` if given.
    The CLI passes a temporary folder (see :func:`tl_lape.formats.atomic_dir`).

    Returns:
        The report as Markdown.
    """
    import json

    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, fig in report.figures().items():
        _save_figure(fig, out / f"{name}.png")
        written.append(f"{name}.png")
    _atomic_write_text(out / f"{stem}.json", json.dumps(report.to_dict(), indent=1))
    written.append(f"{stem}.json")
    text = str(report.to_markdown())
    if markdown:
        _atomic_write_text(out / f"{stem}.md", text)
        written.append(f"{stem}.md")
    if files is not None:
        files.extend(written)
    return text


def _split_list(value: str, option: str) -> tuple[str, ...]:
    items = tuple(v.strip() for v in value.split(",") if v.strip())
    if not items:
        raise LapeError(f"{option} needs at least one comma-separated value, got {value!r}.")
    return items


def _parse_languages(value: str, option: str = "--languages") -> tuple[str, ...]:
    """``"en, fr"`` -> ``("en", "fr")``; refuses empty lists, empty items, repeats and non-codes."""
    from tl_lape.checks import check_language_codes

    items = tuple(v.strip() for v in value.split(","))
    if not any(items):
        raise LapeError(
            f"{option} needs at least one comma-separated language code (e.g. en,fr), "
            f"got {value!r}; leave the option out for the default languages."
        )
    if not all(items):
        raise LapeError(
            f"{option} has an empty item in {value!r}; give codes separated by single commas "
            "(e.g. en,fr)."
        )
    repeated = sorted({v for v in items if items.count(v) > 1})
    if repeated:
        raise LapeError(f"{option} repeats {repeated} in {value!r}; give each language once.")
    check_language_codes(list(items), option)
    return items


def _floats(values: Sequence[str], option: str) -> tuple[float, ...]:
    try:
        numbers = tuple(float(v) for v in values)
    except ValueError:
        raise LapeError(
            f"{option} takes comma-separated numbers, got {','.join(values)!r}."
        ) from None
    bad = [v for v, x in zip(values, numbers, strict=True) if not math.isfinite(x)]
    if bad:
        raise LapeError(
            f"{option} takes finite numbers, got {','.join(bad)!r}; give numbers such as 5,10."
        )
    return numbers


def _steer_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """The run_steering_sweep arguments of the steering options, checked before any work."""
    kwargs: dict[str, Any] = {
        "modes": _split_list(args.modes, "--modes"),
        "top_rates": _floats(_split_list(args.top_rates, "--top-rates"), "--top-rates"),
        "settings": _split_list(args.settings or "english,neutral", "--settings"),
        "deactivate": args.deactivate or "none",
        "random_seed": 0 if args.seed is None else args.seed,
        "max_new_tokens": args.max_new_tokens,
        "batch_size": args.generation_batch_size,
    }
    if args.targets is not None:
        kwargs["targets"] = _parse_languages(args.targets, "--targets")
    bad_rates = [r for r in kwargs["top_rates"] if not 0.0 < r < 1.0]
    if bad_rates:
        raise LapeError(f"--top-rates must lie strictly between 0 and 1, got {list(bad_rates)}.")
    _check_at_least_one(args, ("max_new_tokens", "generation_batch_size"))
    if args.strengths:
        strengths: dict[str, tuple[float, ...]] = {}
        for item in args.strengths:
            mode, sep, values = item.partition("=")
            if not sep or not mode.strip():
                raise LapeError(f"--strengths takes MODE=V[,V...] (e.g. add=5,10), got {item!r}.")
            strengths[mode.strip()] = _floats(
                _split_list(values, f"--strengths {mode}"), f"--strengths {mode}"
            )
        kwargs["strengths"] = strengths
    return kwargs


def _run_sweep(
    model: Any,
    stats: "ActivationStats",
    reference: Mapping[str, Any] | None,
    kwargs: Mapping[str, Any],
    *,
    progress: bool,
) -> Any:
    from tl_lape.experiments.steering import run_steering_sweep

    return run_steering_sweep(
        model,
        stats,
        reference_corpus=(
            {lang: list(texts) for lang, texts in reference.items()}
            if reference is not None
            else None
        ),
        progress=progress,
        **kwargs,
    )


@dataclass(frozen=True)
class _DemoPreset:
    """Budgets of ``tl-lape demo`` for one kind of model (each overridable by an option)."""

    max_tokens: int
    prepend_bos: bool
    evaluate: bool
    eval_tokens: int
    eval_random: int
    selectors: tuple[str, ...]
    steer_new_tokens: int
    steering: str  # "example": a few prompts; "sweep": the library's prompt sets


# A real model (Gemma 3 270M on 2 CPU cores): small budgets so that the whole run stays within
# minutes; scripts/reproduce_gemma.py runs the full-size measurement (docs/model_card_gemma.md).
# Gemma expects <bos> at the start of every sequence. The demo model's budgets are unchanged.
_DEMO_PRESETS = {
    "real": _DemoPreset(2048, True, True, 128, 1, (), 24, "example"),
    "demo": _DemoPreset(60_000, False, False, 4096, 3, ("LAP", "LAVE"), 32, "sweep"),
}


def _demo_settings(args: argparse.Namespace) -> _DemoPreset:
    """The preset of ``args.model`` with the options the user gave applied on top."""
    preset = _DEMO_PRESETS["demo" if args.model == "demo" else "real"]
    chosen = {
        "max_tokens": args.max_tokens_per_language,
        "evaluate": args.evaluate,
        "eval_tokens": args.eval_tokens_per_language,
        "eval_random": args.eval_random,
        "steer_new_tokens": args.steer_new_tokens,
    }
    return dataclasses.replace(preset, **{k: v for k, v in chosen.items() if v is not None})


def _cmd_demo(args: argparse.Namespace) -> int:
    from tl_lape.collection.engine import collect_activation_stats
    from tl_lape.selection import identify_language_neurons
    from tl_lape.sources.corpora import PAPER_LANGUAGES, load_debian_handbook

    _check_rates(args)
    _check_report_folder(args.out)
    _check_collect_sizes(args)
    settings = _demo_settings(args)
    for option, value in (
        ("--max-tokens-per-language", settings.max_tokens),
        ("--eval-tokens-per-language", settings.eval_tokens),
        ("--eval-random", settings.eval_random),
        ("--steer-new-tokens", settings.steer_new_tokens),
    ):
        if value < 1:
            raise LapeError(f"{option} must be at least 1, got {value}.")
    _check_model_source(args.model, args.device)
    dtype = _dtype(args.dtype, args.device)
    started = time.perf_counter()
    steps = 6 if settings.evaluate else 4
    print(f"[1/{steps}] building the handbook corpus (cached after the first run)", flush=True)
    corpus = load_debian_handbook(languages=PAPER_LANGUAGES, split="train")
    print(f"[2/{steps}] loading {args.model} ({str(dtype).removeprefix('torch.')})", flush=True)
    t0 = time.perf_counter()
    model = _load_model(args.model, args.device, dtype)
    load_s = time.perf_counter() - t0
    print(f"[3/{steps}] collecting activation statistics", flush=True)
    t0 = time.perf_counter()
    stats = collect_activation_stats(
        model,
        corpus,
        seq_len=args.seq_len,
        batch_size=args.batch_size,
        max_tokens_per_language=settings.max_tokens,
        prepend_bos=settings.prepend_bos,
        progress=not args.no_progress,
    )
    collect_s = time.perf_counter() - t0
    print(f"[4/{steps}] identifying language neurons and writing the report", flush=True)
    neurons = identify_language_neurons(
        stats,
        top_rate=args.top_rate,
        filter_rate=args.filter_rate,
        activation_bar_ratio=args.activation_bar_ratio,
    )
    # Everything is written into a temporary folder beside --out and moved into place at the
    # end, so an interrupted run never leaves new files beside an earlier report's.
    times = {"started": started, "load": load_s, "collect": collect_s}
    with atomic_dir(args.out) as out:
        summary, sections, elapsed = _demo_report(
            model, neurons, stats, out, args, settings, dtype, times
        )
    print()
    print(summary)
    for section in sections:
        print()
        print(section)
    print(f"\nreport written to {args.out}/ in {elapsed:.1f} s")
    return 0


def _demo_report(
    model: Any,
    neurons: Any,
    stats: "ActivationStats",
    out: Path,
    args: argparse.Namespace,
    settings: _DemoPreset,
    dtype: torch.dtype,
    times: Mapping[str, float],
) -> tuple[str, list[str], float]:
    """Write the demo report's files into ``out``; return its summary, sections and time."""
    from tl_lape.plots import plot_neurons_per_layer, plot_overlap

    stats.save(out / "stats.safetensors")
    neurons.save(out / "neurons.json")
    _save_figure(plot_neurons_per_layer(neurons), out / "neurons_per_layer.png")
    _save_figure(plot_overlap(neurons), out / "overlap.png")
    summary = format_summary(neurons, stats=stats)
    files = ["stats.safetensors", "neurons.json", "neurons_per_layer.png", "overlap.png"]
    sections: list[str] = []
    if settings.evaluate:
        sections = _demo_evaluation(model, neurons, stats, out, files, args, settings)
    elapsed = time.perf_counter() - times["started"]
    about = (
        "the embedded demo model"
        if args.model == "demo"
        else f"{args.model} ({str(dtype).removeprefix('torch.')})"
    )
    text = (
        "# tl-lape demo report\n\n"
        f"Model: {about}, {stats.n_layers} layers x {stats.d_mlp} MLP neurons. "
        "Corpus: the Debian Administrator's Handbook, train split "
        f"({settings.max_tokens:,} tokens per language at most).\n\n"
        f"{summary}\n\n"
        + "".join(f"{section}\n" for section in sections)
        + f"Files: {', '.join(files)}.\n"
        f"Wall time: {elapsed:.1f} s (model load {times['load']:.1f} s, statistics "
        f"{times['collect']:.1f} s).\n"
    )
    _atomic_write_text(out / "summary.md", text)
    return summary, sections, elapsed


# The steering configuration of `tl-lape demo --model demo --evaluate`: `add` x10 at 5% of
# neurons with the other languages' neurons switched off. Of the configurations rerun on fresh
# prompts (docs/model_card.md) it reached the most targets over both prompt settings together.
_DEMO_SWEEP: dict[str, Any] = {
    "modes": ("add",),
    "strengths": {"add": (10.0,)},
    "top_rates": (0.05,),
    "settings": ("english", "neutral"),
    "deactivate": "others",
}


def _demo_evaluation(
    model: Any,
    neurons: Any,
    stats: "ActivationStats",
    out: Path,
    files: list[str],
    args: argparse.Namespace,
    settings: _DemoPreset,
) -> list[str]:
    """Perplexity under deactivation and steering, on the held-out split."""
    from tl_lape.experiments.evaluation import run_evaluation
    from tl_lape.sources.corpora import load_debian_handbook

    print("[5/6] evaluating: perplexity under deactivation (held-out split)", flush=True)
    heldout = load_debian_handbook(languages=stats.languages, split="heldout")
    progress = not args.no_progress
    evaluation = run_evaluation(
        model,
        neurons,
        heldout,
        stats=stats,
        n_random=settings.eval_random,
        selectors=settings.selectors,
        seq_len=min(args.seq_len, settings.eval_tokens),
        batch_size=args.batch_size,
        max_tokens_per_language=settings.eval_tokens,
        progress=progress,
    )
    evaluation_text = _write_report(evaluation, out, "evaluation", markdown=False, files=files)
    if settings.steering == "example":
        print("[6/6] steering a few English prompts", flush=True)
        steering_text = _steering_example(model, neurons, stats, settings.steer_new_tokens)
        _atomic_write_text(out / "steering_example.md", steering_text)
        files.append("steering_example.md")
        return [evaluation_text, steering_text]
    print("[6/6] steering generation sweep", flush=True)
    sweep = {**_DEMO_SWEEP, "max_new_tokens": settings.steer_new_tokens}
    steering = _run_sweep(model, stats, heldout, sweep, progress=progress)
    steering_text = _write_report(steering, out, "steering", markdown=False, files=files)
    return [evaluation_text, steering_text]


# The short steering example of `tl-lape demo` on a real model: English prompts, the English
# neurons switched off and the target's set to `strength` times their mean activation on the
# target's text, at the generated tokens only. docs/model_card_gemma.md says how it was chosen.
_EXAMPLE_PROMPTS = (
    "The package manager downloads",
    "To configure the network, the administrator",
    "The weather today is",
)
_EXAMPLE_TARGETS = ("fr", "es", "zh")
_EXAMPLE_STEERING: dict[str, Any] = {"mode": "replace", "strength": 2.0, "deactivate": "en"}


def _steering_example(
    model: Any, neurons: "LanguageNeurons", stats: "ActivationStats", max_new_tokens: int
) -> str:
    """Greedy continuations of a few English prompts, unsteered and steered to each target."""
    from tl_lape.interventions.generation import generate_with_hooks
    from tl_lape.interventions.hooks import steering_hooks
    from tl_lape.judging.identification import LanguageIdentifier

    targets = [t for t in _EXAMPLE_TARGETS if t in neurons.languages and t in stats.languages]
    identifier = LanguageIdentifier(list(stats.languages))
    prompts = list(_EXAMPLE_PROMPTS)
    outputs: dict[str, list[str]] = {
        "-": cast(list[str], generate_with_hooks(model, prompts, max_new_tokens=max_new_tokens))
    }
    for target in targets:
        hooks = steering_hooks(
            neurons, stats, target, **_EXAMPLE_STEERING, positions="new", model=model
        )
        outputs[target] = cast(
            list[str],
            generate_with_hooks(model, prompts, fwd_hooks=hooks, max_new_tokens=max_new_tokens),
        )
    config = ", ".join(f"{k}={v!r}" for k, v in _EXAMPLE_STEERING.items())
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


# ----------------------------------------------------------------------------- summary


def format_summary(neurons: "LanguageNeurons", *, stats: "ActivationStats | None" = None) -> str:
    """A Markdown summary of a neuron set: counts per language, layer spread, overlaps.

    Args:
        neurons: A :class:`~tl_lape.neurons.LanguageNeurons`.
        stats: The :class:`~tl_lape.stats.ActivationStats` it came from, to report tokens.

    Returns:
        Markdown text with two tables.
    """
    counts = neurons.counts()
    per_layer = neurons.counts_per_layer()  # [lang, n_layers]
    n_layers = neurons.n_layers
    third = max(1, n_layers // 3)
    union = int(neurons.union().sum())  # a LapeError here if the width is unknown
    total_neurons = neurons.n_layers * cast(int, neurons.d_mlp)
    lines = [
        f"Selected {union:,} of {total_neurons:,} MLP neurons "
        f"({100 * union / total_neurons:.2f}%) in {n_layers} layers.",
        "",
        "| language | tokens | neurons | bottom third | middle | top third |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for k, lang in enumerate(neurons.languages):
        row = per_layer[k]
        bottom = int(row[:third].sum())
        top = int(row[n_layers - third :].sum())
        middle = int(row.sum()) - bottom - top
        tokens = "-"
        if stats is not None and lang in stats.languages:
            tokens = f"{int(stats.n_tokens[stats.languages.index(lang)]):,}"
        lines.append(f"| {lang} | {tokens} | {counts[lang]} | {bottom} | {middle} | {top} |")
    jaccard = neurons.jaccard()
    overlap = neurons.overlap()
    pairs = []
    langs = list(neurons.languages)
    for i in range(len(langs)):
        for j in range(i + 1, len(langs)):
            pairs.append((float(jaccard[i, j]), int(overlap[i, j]), langs[i], langs[j]))
    pairs.sort(key=lambda item: (-item[0], item[2], item[3]))
    lines += ["", "| pair | shared neurons | Jaccard |", "| --- | ---: | ---: |"]
    for jac, shared, a, b in pairs[:5]:
        lines.append(f"| {a}-{b} | {shared} | {jac:.3f} |")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- helpers


def _load_model(name: str, device: str, dtype: torch.dtype | None) -> Any:
    from tl_lape.sources.models import load_model

    return load_model(name, device=device, dtype=dtype)


def _load_corpus(
    source: str, languages: str | None, split: str, hf_config: str
) -> Mapping[str, Any]:
    from tl_lape.sources import corpora

    langs = _parse_languages(languages) if languages is not None else tuple(corpora.PAPER_LANGUAGES)
    if source == "handbook":
        return corpora.load_debian_handbook(languages=langs, split=split)
    if source.startswith("text:"):
        folder = Path(source[len("text:") :])
        return corpora.load_text_files({lang: folder / f"{lang}.txt" for lang in langs})
    if source.startswith("hf:"):
        return corpora.load_hf_dataset(source[len("hf:") :], hf_config, langs)
    raise LapeError(
        f"unknown corpus source {source!r}. Use 'handbook', 'text:DIR' (with DIR/<lang>.txt) "
        "or 'hf:DATASET'."
    )


def _check_rates(args: argparse.Namespace) -> None:
    for name in ("top_rate", "filter_rate", "activation_bar_ratio"):
        value = getattr(args, name)
        if not 0.0 < value < 1.0:
            raise LapeError(
                f"--{name.replace('_', '-')} must lie strictly between 0 and 1, got {value}."
            )


def _check_at_least_one(args: argparse.Namespace, names: Sequence[str]) -> None:
    for name in names:
        value = getattr(args, name)
        if value < 1:
            raise LapeError(f"--{name.replace('_', '-')} must be at least 1, got {value}.")


def _check_collect_sizes(args: argparse.Namespace) -> None:
    """--seq-len, --batch-size and --max-tokens-per-language, checked before any loading."""
    _check_at_least_one(args, ("seq_len", "batch_size"))
    if args.max_tokens_per_language is not None:
        _check_at_least_one(args, ("max_tokens_per_language",))


def _check_report_folder(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise LapeError(
            f"cannot write the report folder {str(out)!r}: it is a file; remove it or give "
            "another --out"
        )
    check_output_folder(out, f"the report folder {str(out)!r}")


def _check_device(device: str) -> None:
    """Refuse a device torch does not know or this machine does not have, before any loading."""
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError, TypeError):
        raise LapeError(
            f"--device {device!r} is not a torch device; give cpu, cuda, cuda:N or mps."
        ) from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise LapeError(
            f"--device {device!r} needs CUDA, which is not available on this machine (torch "
            f"{torch.__version__}, CUDA build {torch.version.cuda}); use --device cpu."
        )
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise LapeError(
            f"--device {device!r}: this machine has {torch.cuda.device_count()} CUDA device(s); "
            "give cuda:0 or another existing index."
        )
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise LapeError(f"--device {device!r}: MPS is not available here; use --device cpu.")
    if dev.type not in ("cpu", "cuda", "mps"):
        raise LapeError(f"--device {device!r} is not supported; give cpu, cuda, cuda:N or mps.")


def _check_model_source(name: str, device: str) -> None:
    """Check --device and a local --model folder before the model is loaded.

    A name that is clearly a path (absolute, starting with ``.`` or ``~``, or with more than
    one ``/``) must be an existing folder, and a ``model.safetensors`` in it must be whole.
    """
    from tl_lape.sources.models import MODEL_ALIASES

    _check_device(device)
    if name in MODEL_ALIASES:
        return
    path = Path(name).expanduser()
    looks_like_path = path.is_absolute() or name.startswith((".", "~")) or name.count("/") > 1
    if not path.exists():
        if looks_like_path:
            raise LapeError(
                f"--model {name!r}: no such file or folder; give 'gemma-3-270m', 'demo', a "
                ".gguf file, an existing folder saved with save_pretrained, or a Hugging Face "
                "model name such as 'gpt2'."
            )
        return
    if not path.is_dir():
        if path.suffix == ".gguf":
            return  # read and checked by tl_lape.load_model, before anything is cached
        raise LapeError(
            f"--model {name!r} is a file but not a .gguf file; give a .gguf file or the "
            "folder that holds a model saved with save_pretrained (with config.json)."
        )
    weights = path / "model.safetensors"
    if weights.is_file():
        from safetensors import SafetensorError, safe_open

        try:
            with safe_open(str(weights), framework="pt") as f:
                f.keys()
        except (SafetensorError, OSError, ValueError) as err:
            raise LapeError(
                f"--model {name!r}: {str(weights)!r} is damaged or truncated "
                f"({str(err)[:120]}); save the model again or download it again."
            ) from None


def _check_stats_cover(
    neurons: "LanguageNeurons", neurons_path: Path, stats: "ActivationStats", stats_path: Path
) -> None:
    """``evaluate --stats``: the statistics must be of the model and languages of the set."""
    missing = [lang for lang in neurons.languages if lang not in stats.languages]
    if missing:
        raise LapeError(
            f"--stats {str(stats_path)!r} has no statistics for languages {missing} of the "
            f"neuron set {str(neurons_path)!r} (it has {list(stats.languages)}); give "
            "statistics collected on the languages of the set, or leave --stats out."
        )
    if (stats.n_layers, stats.d_mlp) != (neurons.n_layers, neurons.d_mlp):
        raise LapeError(
            f"--stats {str(stats_path)!r} is of a model with n_layers={stats.n_layers}, "
            f"d_mlp={stats.d_mlp}, but the neuron set {str(neurons_path)!r} has "
            f"n_layers={neurons.n_layers}, d_mlp={neurons.d_mlp}; give statistics of its model."
        )


def _save_figure(fig: Any, path: Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, format=path.suffix.lstrip(".") or "png")


def _atomic_write_text(path: Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
