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
import logging
import math
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from tl_lape.checks import check_positive_int
from tl_lape.errors import LapeError
from tl_lape.experiments.evaluation import DEFAULT_LEVEL, DEFAULT_MAX_TOKENS_PER_LANGUAGE
from tl_lape.experiments.reports import format_summary, report_page, write_report, write_text
from tl_lape.experiments.steering import DEFAULT_MAX_NEW_TOKENS
from tl_lape.formats import (
    atomic_dir,
    atomic_paths,
    check_output_file,
    check_report_folder,
    json_text,
)
from tl_lape.intervals import DEFAULT_N_BOOT
from tl_lape.neurons import DEFAULT_POOL
from tl_lape.sources.models import DTYPES

if TYPE_CHECKING:
    from tl_lape.neurons import LanguageNeurons
    from tl_lape.stats import ActivationStats

__all__ = ["main"]

log = logging.getLogger("tl_lape")


def _dtype(name: str, device: str) -> torch.dtype:
    from tl_lape.sources.models import resolve_dtype

    return resolve_dtype(name, device)


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
    for add_command in (
        _add_collect_command,
        _add_identify_command,
        _add_evaluate_command,
        _add_steer_command,
        _add_demo_command,
    ):
        add_command(sub)
    return parser


def _add_collect_command(sub: Any) -> None:
    """`collect`: a model and a corpus to a statistics file."""
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
        default=None,
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
    collect.add_argument(
        "--shards",
        type=int,
        default=None,
        metavar="N",
        help="collect the statistics in N disjoint parts of the corpus and also write each to "
        "OUT.shards/ (for `identify --stability`); --out holds their sum",
    )
    _add_overwrite_option(collect)
    collect.set_defaults(func=_cmd_collect)


def _add_identify_command(sub: Any) -> None:
    """`identify`: a statistics file to a neuron-set file."""
    identify = sub.add_parser("identify", help="select language neurons from statistics")
    identify.add_argument("stats", type=Path, help="statistics file written by `collect`")
    _add_threshold_options(identify)
    identify.add_argument("--out", required=True, type=Path, help="neuron-set file (JSON)")
    identify.add_argument(
        "--rucaibox", type=Path, default=None, help="also write the paper's .neuron.pth format"
    )
    identify.add_argument(
        "--stability",
        type=Path,
        default=None,
        metavar="FILE",
        help="also resample the statistics' shards (STATS.shards/, from `collect --shards`) and "
        "write each selected neuron's selection frequency and each language's stability (JSON)",
    )
    identify.add_argument(
        "--stability-boot",
        type=int,
        default=None,
        help="bootstrap replicates for --stability (default: 200)",
    )
    _add_overwrite_option(identify)
    identify.set_defaults(func=_cmd_identify)


def _add_evaluate_command(sub: Any) -> None:
    """`evaluate`: perplexity under deactivation, with matched random controls and intervals."""
    evaluate = sub.add_parser(
        "evaluate", help="perplexity under deactivation, with matched random controls"
    )
    evaluate.add_argument("neurons", type=Path, help="neuron-set file written by `identify`")
    _add_model_options(evaluate)
    _add_corpus_options(evaluate)
    evaluate.set_defaults(split="heldout")
    evaluate.add_argument(
        "--stats", type=Path, default=None, help="statistics file, to also compare lap and lave"
    )
    evaluate.add_argument("--n-random", type=int, default=3, help="matched random draws")
    evaluate.add_argument(
        "--seed",
        type=int,
        default=0,
        help="seed of the random draws, the bootstrap and (with --positions-per-window) the "
        "scored positions",
    )
    evaluate.add_argument(
        "--control",
        default="layer",
        choices=["layer", "activity"],
        help="how the random sets are matched: 'layer' (size and layers) or 'activity' (also "
        "firing rate and mean activation; needs --stats)",
    )
    evaluate.add_argument(
        "--pool",
        type=int,
        default=None,
        help="with --control activity: nearest candidates each draw picks from (1: the nearest, "
        "one set; needs --n-random 1)",
    )
    evaluate.add_argument(
        "--selector-sizes",
        default=None,
        choices=["language", "budget"],
        help="with --stats: give lap and lave as many neurons per language as the set has "
        "('language') or the same total budget split their own way ('budget', the paper)",
    )
    evaluate.add_argument(
        "--n-boot", type=int, default=DEFAULT_N_BOOT, help="bootstrap replicates of the intervals"
    )
    evaluate.add_argument(
        "--level", type=float, default=DEFAULT_LEVEL, help="coverage of the intervals"
    )
    evaluate.add_argument(
        "--positions-per-window",
        type=int,
        default=None,
        help="score this many seeded positions per window, the same in every row (default: all)",
    )
    _add_collect_options(evaluate, default_max_tokens=DEFAULT_MAX_TOKENS_PER_LANGUAGE)
    evaluate.add_argument("--out", required=True, type=Path, help="report folder")
    _add_overwrite_option(evaluate)
    evaluate.set_defaults(func=_cmd_evaluate)


def _add_steer_command(sub: Any) -> None:
    """`steer`: the steering sweep, or with ``--study`` the steering study."""
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
    study.add_argument(
        "--clas-strengths",
        default=None,
        help="comma-separated alphas of CLaS-Bench's unit-norm DiffMean (default: the DiffMean "
        "strengths times the residual norm)",
    )
    study.add_argument(
        "--dev-budget",
        type=int,
        default=None,
        help="configurations each method tries on the development prompts, the same for all "
        "(default: every configuration of each grid)",
    )
    study.add_argument(
        "--halving-rounds",
        type=int,
        default=None,
        help="rounds of successive halving over the development prompts (default: 0)",
    )
    study.add_argument(
        "--positions",
        default=None,
        help="where the hooks act: all (the prompt too), new (generated tokens), or all,new "
        "(default: all)",
    )
    study.add_argument(
        "--doses",
        default=None,
        help="multiples of each chosen strength for the dose-response curves (default: 0.5,1,2)",
    )
    study.add_argument(
        "--dose-prompts",
        type=int,
        default=None,
        help="development prompts per dose-response curve (default: all of them)",
    )
    study.add_argument(
        "--few-shot",
        type=int,
        default=None,
        help="few-shot examples per target from the reference corpus's train split, a "
        "prompting baseline beside the one-line cue (default: 0, none)",
    )
    steer.add_argument("--no-progress", action="store_true", help="hide progress bars")
    steer.add_argument("--out", required=True, type=Path, help="report folder")
    _add_overwrite_option(steer)
    steer.set_defaults(func=_cmd_steer)


def _add_demo_command(sub: Any) -> None:
    """`demo`: the whole pipeline on one model, written to a report folder."""
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
        help="held-out tokens per language for the perplexity matrices (default: 128; "
        f"{DEFAULT_MAX_TOKENS_PER_LANGUAGE} for --model demo), cut into windows of the "
        "preset's evaluation length (32 tokens on a real model)",
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
    _add_overwrite_option(demo)
    demo.set_defaults(func=_cmd_demo)


def _add_overwrite_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an existing file, or write into an existing folder, that tl_lape did not "
        "write (an input is never overwritten)",
    )


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
        choices=sorted([*DTYPES, "auto"]),
        help=f"model dtype; 'auto' is bfloat16 on a GPU or a CPU with AMX, else float32 "
        f"(default: {default})",
    )


def _add_corpus_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--corpus",
        default="handbook",
        help="'handbook' (the Debian Administrator's Handbook), 'libreoffice' (the LibreOffice "
        "Help), 'text:DIR' (DIR/<lang>.txt), or 'hf:DATASET' with --hf-config (a Hugging Face "
        "dataset through `datasets`)",
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
    parser.add_argument(
        "--seq-len",
        type=int,
        default=None,
        help="tokens per window (default: the library's: 512 or the model's context if "
        "shorter for collect, 256 for evaluate)",
    )
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
        "--filter-rate",
        type=float,
        default=None,
        help="quantile of the selection's firing filter (default: the paper's, 0.95)",
    )
    parser.add_argument(
        "--activation-bar-ratio",
        type=float,
        default=None,
        help="quantile above which a neuron belongs to a language (default: the paper's, 0.95)",
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
    parser.add_argument(
        "--max-new-tokens",
        type=int,
        default=DEFAULT_MAX_NEW_TOKENS,
        help=f"tokens per output (default: {DEFAULT_MAX_NEW_TOKENS})",
    )
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
    from tl_lape.collection.engine import collect_activation_stats

    if args.resume is not None and Path(args.resume).is_dir():
        check_output_file(args.resume, "checkpoint", overwrite=True)  # says: it is a directory
    inputs = _inputs(args)
    _only_with([("--checkpoint-every", args.checkpoint_every)], args.resume is not None, "--resume")
    if args.checkpoint_every is None:
        args.checkpoint_every = 1000
    check_output_file(args.out, "statistics file", overwrite=args.overwrite, inputs=inputs)
    _check_collect_sizes(args)
    if args.resume is not None:
        # Read first if it exists (a resume) and refused there if it is not a checkpoint.
        others = [(what, path) for what, path in inputs if what != "checkpoint"]
        check_output_file(args.resume, "checkpoint", overwrite=True, inputs=others)
        _check_at_least_one(args, ("checkpoint_every",))
    if args.residual_means is not None:
        check_output_file(
            args.residual_means, "residual-means file", overwrite=args.overwrite, inputs=inputs
        )
        if Path(args.residual_means).resolve() == Path(args.out).resolve():
            raise LapeError(
                f"--out and --residual-means name the same file {str(args.out)!r}; give two paths"
            )
        if args.resume is not None:
            raise LapeError(
                "--residual-means does not work with --resume (a checkpoint keeps the firing "
                "counts only); drop one of them"
            )
    if args.shards is not None:
        check_positive_int(args.shards, "--shards", example=8)
        check_report_folder(_shards_folder(args.out), overwrite=args.overwrite, inputs=inputs)
        clash = [
            opt
            for opt, v in (("--resume", args.resume), ("--residual-means", args.residual_means))
            if v is not None
        ]
        if clash:
            raise LapeError(
                f"--shards does not work with {' or '.join(clash)} (each shard is a collection "
                "of its own); drop one of them"
            )
    _check_model_source(args.model, args.device)
    corpus = _load_corpus(args.corpus, args.languages, args.split, args.hf_config)
    window_kwargs: dict[str, Any] = {
        "seq_len": args.seq_len,
        "batch_size": args.batch_size,
        "max_tokens_per_language": args.max_tokens_per_language,
        "prepend_bos": args.prepend_bos,
        "progress": not args.no_progress,
    }
    if args.resume is not None and Path(args.resume).is_file():
        _check_resume(args.resume, corpus, window_kwargs)
    model = _load_model(args.model, args.device, _dtype(args.dtype, args.device))
    if args.shards is not None:
        stats = _collect_shards(model, corpus, args, window_kwargs)
    elif args.resume is not None:
        stats = collect_activation_stats(
            model,
            corpus,
            checkpoint_path=args.resume,
            checkpoint_every=args.checkpoint_every,
            **window_kwargs,
        )
    elif args.residual_means is not None:
        stats, means = collect_activation_stats(model, corpus, residual_means=True, **window_kwargs)
        with atomic_paths([args.out, args.residual_means]) as (stats_tmp, means_tmp):
            stats.save(stats_tmp)  # both files are moved into place together, or neither
            means.save(means_tmp)
    else:
        stats = collect_activation_stats(model, corpus, **window_kwargs)
    if args.residual_means is None and args.shards is None:
        try:
            stats.save(args.out, overwrite=args.overwrite)
        except LapeError as err:  # e.g. a full disk: say what is kept and how to go on
            raise LapeError(f"{err}; {_after_a_failed_save(args)}") from None
    tokens = ", ".join(
        f"{lang} {int(n):,}" for lang, n in zip(stats.languages, stats.n_tokens, strict=True)
    )
    print(f"wrote {args.out}: {stats.n_layers} layers x {stats.d_mlp} neurons; tokens: {tokens}")
    return 0


def _collect_shards(
    model: Any, corpus: Any, args: argparse.Namespace, window_kwargs: dict[str, Any]
) -> Any:
    """`collect --shards N`: the shards into OUT.shards/ and their sum into OUT, all or none."""
    from tl_lape.experiments.analysis import collect_shards

    kwargs = dict(window_kwargs)
    budget = kwargs.pop("max_tokens_per_language")
    shards = collect_shards(
        model, corpus, n_shards=args.shards, max_tokens_per_language=budget, **kwargs
    )
    stats = sum(shards[1:], start=shards[0])
    folder = _shards_folder(args.out)
    with atomic_paths([args.out]) as (stats_tmp,), atomic_dir(folder) as tmp:
        for i, shard in enumerate(shards):
            shard.save(tmp / f"shard{i}.safetensors")
        stats.save(stats_tmp)
    for stale in folder.glob("shard*.safetensors"):  # an earlier run's with more shards
        if stale.stem[5:].isdigit() and int(stale.stem[5:]) >= len(shards):
            stale.unlink()
    print(f"wrote {len(shards)} shards to {folder}/")
    return stats


def _shards_folder(stats_path: str | Path) -> Path:
    """Where `collect --shards` writes the shards of the statistics file ``stats_path``."""
    path = Path(stats_path)
    return path.with_name(path.name + ".shards")


def _load_shards(stats_path: Path) -> list[Any]:
    """The shards `collect --shards` wrote beside ``stats_path``, in order."""
    from tl_lape.stats import ActivationStats

    folder = _shards_folder(stats_path)
    numbered = [p for p in folder.glob("shard*.safetensors") if p.stem[5:].isdigit()]
    paths = sorted(numbered, key=lambda p: int(p.stem[5:]))
    if len(paths) < 2:
        raise LapeError(
            f"--stability resamples the statistics' shards, expected in {str(folder)!r}; found "
            f"{len(paths)} shard file(s). Collect the statistics with `tl-lape collect --shards 8 "
            f"--out {stats_path}` first"
        )
    return [ActivationStats.load(p) for p in paths]


def _after_a_failed_save(args: argparse.Namespace) -> str:
    """What `collect` says when its final save fails: where the counts are, how to go on."""
    if args.resume is not None and Path(args.resume).is_file():
        return (
            f"the collected counts are kept in the checkpoint {str(args.resume)!r}: run the same "
            "command again to write the statistics without collecting again"
        )
    return (
        "the collected counts are lost; run again (with --resume CHECKPOINT, a long run keeps "
        "its counts in a checkpoint that survives a failed save)"
    )


def _cmd_identify(args: argparse.Namespace) -> int:
    from tl_lape.selection import identify_language_neurons
    from tl_lape.stats import ActivationStats

    inputs, overwrite = _inputs(args), args.overwrite
    _only_with(
        [("--stability-boot", args.stability_boot)], args.stability is not None, "--stability"
    )
    if args.stability_boot is None:
        args.stability_boot = 200
    targets = [check_output_file(args.out, "neuron-set file", overwrite=overwrite, inputs=inputs)]
    if args.rucaibox is not None:
        targets.append(
            check_output_file(args.rucaibox, "--rucaibox file", overwrite=overwrite, inputs=inputs)
        )
        if targets[1].resolve() == targets[0].resolve():
            raise LapeError(
                f"--out and --rucaibox name the same file {str(args.out)!r}; give two paths"
            )
    shards = None
    if args.stability is not None:
        targets.append(
            check_output_file(
                args.stability, "--stability file", overwrite=overwrite, inputs=inputs
            )
        )
        if len({t.resolve() for t in targets}) < len(targets):
            raise LapeError(
                f"--stability names a file another output also names ({str(args.stability)!r}); "
                "give each output its own path"
            )
        check_positive_int(args.stability_boot, "--stability-boot", example=200)
        if args.stability_boot < 2:
            raise LapeError(f"--stability-boot must be >= 2; received {args.stability_boot}")
        shards = _load_shards(args.stats)
    stats = ActivationStats.load(args.stats)
    thresholds = {
        "top_rate": args.top_rate,
        "filter_rate": args.filter_rate,
        "activation_bar_ratio": args.activation_bar_ratio,
    }
    neurons = identify_language_neurons(stats, **thresholds)
    stability = None
    if shards is not None:
        from tl_lape.experiments.analysis import bootstrap_selection

        stability = bootstrap_selection(shards, n_boot=args.stability_boot, **thresholds)
        if not torch.equal(stability.neurons.masks(), neurons.masks()):
            raise LapeError(
                f"the shards in {str(_shards_folder(args.stats))!r} do not add up to "
                f"{str(args.stats)!r} (their selection differs); collect both again with "
                "`tl-lape collect --shards N`"
            )
    # All files, or none: each is written beside its target, then all are moved into place.
    with atomic_paths(targets) as tmps:
        neurons.save(tmps[0])
        if args.rucaibox is not None:
            neurons.to_rucaibox(tmps[1])
        if stability is not None:
            # The format tag marks the file as tl_lape's: a later run may replace it.
            doc = {"format": "tl_lape.SelectionStability", **stability.to_dict()}
            tmps[-1].write_text(json_text(doc), encoding="utf-8")
    written = [str(t) for t in (args.out, args.rucaibox, args.stability) if t is not None]
    print("wrote " + " and ".join(written))
    print(format_summary(neurons))
    if stability is not None:
        print(stability.to_markdown())
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from tl_lape.experiments.evaluation import check_evaluation_options, run_evaluation
    from tl_lape.neurons import LanguageNeurons
    from tl_lape.stats import ActivationStats

    _only_with([("--pool", args.pool)], args.control == "activity", "--control activity")
    _only_with([("--selector-sizes", args.selector_sizes)], args.stats is not None, "--stats")
    check_report_folder(args.out, overwrite=args.overwrite, inputs=_inputs(args))
    _check_collect_sizes(args)
    _check_model_source(args.model, args.device)
    neurons = LanguageNeurons.load(args.neurons)
    stats = ActivationStats.load(args.stats) if args.stats is not None else None
    if stats is not None:
        _check_stats_cover(neurons, args.neurons, stats, args.stats)
    options: dict[str, Any] = {
        "n_random": args.n_random,
        "seed": args.seed,
        "batch_size": args.batch_size,
        "positions_per_window": args.positions_per_window,
        "control": args.control,
        "pool": DEFAULT_POOL if args.pool is None else args.pool,
        "selector_sizes": args.selector_sizes or "language",
        "n_boot": args.n_boot,
        "level": args.level,
    }
    check_evaluation_options(stats=stats, **options)  # before the model loads
    languages = args.languages if args.languages is not None else ",".join(neurons.languages)
    corpus = _load_corpus(args.corpus, languages, args.split, args.hf_config)
    model = _load_model(args.model, args.device, _dtype(args.dtype, args.device))
    report = run_evaluation(
        model,
        neurons,
        corpus,
        stats=stats,
        max_tokens_per_language=args.max_tokens_per_language,
        progress=not args.no_progress,
        **options,
        **({} if args.seq_len is None else {"seq_len": args.seq_len}),
    )
    with atomic_dir(args.out) as tmp:
        files: list[str] = []
        text = _write_report(report, tmp, "evaluation", files=files)
        files.append("report.html")
        page = report_page(
            tmp,
            title="tl-lape evaluation report",
            intro=f"Model: {args.model}. Neuron set: {args.neurons}. Corpus: {args.corpus} "
            f"({args.split} split).\n\nFiles: {', '.join(files)}.",
            neurons=neurons,
            stats=stats,
            sections=[text],
            files=files,
        )
        write_text(tmp / "report.html", page)
    print(text)
    print(f"\nreport written to {args.out}/")
    return 0


def _cmd_steer(args: argparse.Namespace) -> int:
    from tl_lape.stats import ActivationStats

    check_report_folder(args.out, overwrite=args.overwrite, inputs=_inputs(args))
    if args.study:
        return _cmd_steer_study(args)
    study_only = [
        ("--means", args.means),
        ("--n-random", args.n_random),
        ("--n-content", args.n_content),
        ("--diffmean-layers", args.diffmean_layers),
        ("--diffmean-strengths", args.diffmean_strengths),
        ("--clas-strengths", args.clas_strengths),
        ("--dev-budget", args.dev_budget),
        ("--halving-rounds", args.halving_rounds),
        ("--positions", args.positions),
        ("--doses", args.doses),
        ("--dose-prompts", args.dose_prompts),
        ("--few-shot", args.few_shot),
    ]
    _only_with(study_only, False, "--study")
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
    from tl_lape.collection.residual_means import ResidualMeans
    from tl_lape.experiments.steering_study import check_study_inputs, run_steering_study
    from tl_lape.stats import ActivationStats

    sweep, parsed = _study_arguments(args)
    n_content = parsed["n_content"]
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
        "filter_rate": sweep.get("filter_rate"),
        "activation_bar_ratio": sweep.get("activation_bar_ratio"),
        "strengths": parsed["strengths"],
        "deactivate": (args.deactivate,) if args.deactivate else ("none", "others"),
        "diffmean_layers": parsed["diffmean_layers"],
        "diffmean_strengths": parsed["diffmean_strengths"],
        "n_random": 3 if args.n_random is None else args.n_random,
        **{k: parsed[k] for k in _STUDY_PLAN_OPTIONS},
    }
    # Everything but the model, before loading it.
    plan = check_study_inputs(stats, means, **options)
    if args.few_shot:  # None or 0: no few-shot baseline
        from tl_lape.experiments.steering_prompts import few_shot_examples

        train = _load_corpus(
            args.reference_corpus, ",".join(stats.languages), "train", args.hf_config
        )
        held_out = [t for texts in options["reference_corpus"].values() for t in texts]
        held_out += [text for item in parallel for text in item.values()]
        options["few_shot"] = few_shot_examples(
            train, plan.targets, k=args.few_shot, exclude=held_out
        )
        check_study_inputs(stats, means, **options)  # the examples against the plan's targets
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


#: The study options the command line passes to the library as they are parsed.
_STUDY_PLAN_OPTIONS = (
    "clas_strengths",
    "dev_budget",
    "halving_rounds",
    "positions",
    "doses",
    "dose_prompts",
)


def _study_arguments(args: argparse.Namespace) -> tuple[dict[str, Any], dict[str, Any]]:
    """The sweep options and the study's own options of ``steer --study``, parsed and
    checked before anything is loaded."""
    from tl_lape.experiments.steering_study import DEFAULT_DOSES, DEFAULT_STRENGTHS

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
    if args.few_shot is not None and args.few_shot < 0:
        raise LapeError(f"--few-shot must be 0 (none) or more, got {args.few_shot}.")
    study = {
        "n_content": n_content,
        "diffmean_layers": layers,
        "diffmean_strengths": diff_strengths,
        "strengths": strengths,
        "clas_strengths": None
        if args.clas_strengths is None
        else _floats(_split_list(args.clas_strengths, "--clas-strengths"), "--clas-strengths"),
        "dev_budget": args.dev_budget,
        "halving_rounds": 0 if args.halving_rounds is None else args.halving_rounds,
        "positions": ("all",)
        if args.positions is None
        else _split_list(args.positions, "--positions"),
        "doses": DEFAULT_DOSES
        if args.doses is None
        else _floats(_split_list(args.doses, "--doses"), "--doses"),
        "dose_prompts": args.dose_prompts,
    }
    return sweep, study


def _write_report(
    report: Any, out: Path, stem: str, *, markdown: bool = True, files: list[str] | None = None
) -> str:
    return write_report(report, out, stem, markdown=markdown, files=files)


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
        "seed": 0 if args.seed is None else args.seed,
        "max_new_tokens": args.max_new_tokens,
        "batch_size": args.generation_batch_size,
    }
    for name in ("filter_rate", "activation_bar_ratio"):
        value = getattr(args, name)
        if value is not None:
            if not 0.0 < value < 1.0:
                raise LapeError(
                    f"--{name.replace('_', '-')} must lie strictly between 0 and 1, got {value}; "
                    "leave it out for the paper's 0.95."
                )
            kwargs[name] = value
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


def _cmd_demo(args: argparse.Namespace) -> int:
    from tl_lape.experiments.demo import demo_settings, run_demo

    settings = demo_settings(
        args.model,
        out=args.out,
        device=args.device,
        dtype=args.dtype,
        seq_len=args.seq_len,
        batch_size=args.batch_size,
        max_tokens_per_language=args.max_tokens_per_language,
        top_rate=args.top_rate,
        filter_rate=args.filter_rate,
        activation_bar_ratio=args.activation_bar_ratio,
        evaluate=args.evaluate,
        eval_tokens_per_language=args.eval_tokens_per_language,
        eval_random=args.eval_random,
        steer_new_tokens=args.steer_new_tokens,
        progress=not args.no_progress,
        overwrite=args.overwrite,
    )
    evaluation_only = [
        ("--eval-tokens-per-language", args.eval_tokens_per_language),
        ("--eval-random", args.eval_random),
        ("--steer-new-tokens", args.steer_new_tokens),
    ]
    _only_with(evaluation_only, settings.evaluate, "--evaluate")
    result = run_demo(settings, echo=lambda line: print(line, flush=True))
    print()
    print(result.summary)
    for section in result.sections:
        print()
        print(section)
    print(f"\nreport written to {args.out}/ in {result.seconds:.1f} s")
    return 0


# ----------------------------------------------------------------------------- helpers


def _load_model(name: str, device: str, dtype: torch.dtype | None) -> Any:
    from tl_lape.sources.models import load_model

    return load_model(name, device=device, dtype=dtype)


def _load_corpus(
    source: str, languages: str | None, split: str, hf_config: str
) -> Mapping[str, Any]:
    from tl_lape.sources.corpora import load_corpus

    langs = _parse_languages(languages) if languages is not None else None
    return load_corpus(source, languages=langs, split=split, hf_config=hf_config)


def _inputs(args: argparse.Namespace) -> list[tuple[str, Path]]:
    """The files and folders a command reads, for the output rule
    (:func:`tl_lape.formats.check_output_file`): no output may be one of them."""
    from tl_lape.sources.models import MODEL_ALIASES

    found = [
        (what, Path(getattr(args, name)))
        for name, what in (
            ("stats", "statistics file"),
            ("neurons", "neuron-set file"),
            ("means", "residual-means file"),
        )
        if getattr(args, name, None) is not None
    ]
    if getattr(args, "resume", None) is not None:
        found.append(("checkpoint", Path(args.resume)))
    model = getattr(args, "model", None)
    if model is not None and model not in MODEL_ALIASES and Path(model).expanduser().exists():
        found.append(("model", Path(model).expanduser()))
    for name in ("corpus", "reference_corpus"):
        source = getattr(args, name, None)
        if isinstance(source, str) and source.startswith("text:"):
            folder = Path(source[len("text:") :]).expanduser()
            if folder.is_dir():
                found += [("corpus file", p) for p in sorted(folder.iterdir()) if p.is_file()]
    return found


def _only_with(options: Sequence[tuple[str, Any]], enabled: bool, needed: str) -> None:
    """Refuse options given (not None) that do nothing unless ``needed`` is given too: an
    option silently ignored looks like an option that worked."""
    given = [name for name, value in options if value is not None]
    if given and not enabled:
        raise LapeError(
            f"{', '.join(given)} only apply with {needed}; add {needed}, or leave "
            f"{'it' if len(given) == 1 else 'them'} out"
        )


def _check_at_least_one(args: argparse.Namespace, names: Sequence[str]) -> None:
    for name in names:
        value = getattr(args, name)
        if value < 1:
            raise LapeError(f"--{name.replace('_', '-')} must be at least 1, got {value}.")


def _check_collect_sizes(args: argparse.Namespace) -> None:
    """--seq-len, --batch-size and --max-tokens-per-language, checked before any loading."""
    from tl_lape.collection.windows import check_seq_len

    _check_at_least_one(args, ("batch_size",))
    if args.seq_len is not None:
        _check_at_least_one(args, ("seq_len",))
        check_seq_len(args.seq_len, "--seq-len")
    if args.max_tokens_per_language is not None:
        _check_at_least_one(args, ("max_tokens_per_language",))


def _check_resume(path: Path, corpus: Mapping[str, Any], window_kwargs: Mapping[str, Any]) -> None:
    """``collect --resume`` with an existing file: read it as a checkpoint (verifying its
    checksum) and compare its languages and the window options given (``window_kwargs``, as
    collection gets them; ``progress`` is not a setting), before the model loads; the model's
    part of the fingerprint is compared once the model is there."""
    from tl_lape.collection.checkpoint import CollectionCheckpoint

    checkpoint = CollectionCheckpoint.load(path)
    known = {
        "corpus": {"languages": list(corpus)},
        "settings": {k: v for k, v in window_kwargs.items() if k != "progress" and v is not None},
    }
    checkpoint.check_matches(known, path, partial=True)


def _check_model_source(name: str, device: str) -> None:
    from tl_lape.sources.models import check_model_source

    check_model_source(name, device=device)


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
