"""Every output of a steering study, and what is drawn from them: examples by rule, intervals.

A steering study (:mod:`tl_lape.experiments.steering_study`) keeps one record per generated
output: its prompt, method, configuration, target, and each judge's verdict and score. From
these records, and nothing else:

- :func:`output_records`: the records of one judged batch;
- :func:`choose_examples`: the outputs a report quotes, chosen by rule: one at random (seeded
  by the cell's name, so the same study quotes the same outputs) and the *weakest success*
  (the output counted as a success that the unsteered model found least likely), never "the
  first two";
- :func:`success_estimates`: per (setting, configuration, target) the success rate with a
  bootstrap interval over prompts, and per (setting, configuration) the mean over targets with
  a bootstrap *clustered by prompt* (the same prompts serve every target, so their outcomes are
  not independent);
- :func:`paired_differences`: the difference in success between two methods on the same
  prompts, per target and averaged over targets, with the same paired, clustered bootstrap.
  A method with several configurations in one cell (the random draws) counts, per prompt, the
  mean over them.

One prompt gives no interval (:class:`~tl_lape.intervals.Estimate` prints ``± n/a``), never
``± 0``.

Example:
    >>> records = [
    ...     {"phase": "fresh", "setting": "english", "method": m, "config": m, "target": "fr",
    ...      "prompt_index": i, "success": s}
    ...     for m, outcome in (("lape", [1, 1, 0, 1]), ("none", [0, 0, 0, 1]))
    ...     for i, s in enumerate(outcome)]
    >>> diff = paired_differences(records, pairs=[("lape", "none")], n_boot=200)
    >>> diff[0]["target"], diff[0]["estimate"].value
    ('fr', 0.5)
"""

import random
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch

from tl_lape.intervals import DEFAULT_N_BOOT, Estimate, bootstrap_weights, percentile_interval
from tl_lape.judging.outputs import SteeringOutputs

__all__ = [
    "METHOD_PAIRS",
    "choose_examples",
    "output_records",
    "paired_differences",
    "success_estimates",
]

#: The method differences a study reports, first minus second.
METHOD_PAIRS: tuple[tuple[str, str], ...] = (
    ("lape", "diffmean"),
    ("lape", "clas"),
    ("lape", "random"),
    ("lape", "prompt"),
    ("lape", "fewshot"),
    ("lape", "none"),
    ("diffmean", "random_diffmean"),
    ("diffmean", "random"),
    ("diffmean", "prompt"),
    ("diffmean", "none"),
    ("clas", "random_clas"),
    ("clas", "diffmean"),
    ("combined", "lape"),
    ("combined", "diffmean"),
    ("lape_new", "lape"),
    ("diffmean_new", "diffmean"),
    ("fewshot", "prompt"),
    ("prompt", "none"),
    ("fewshot", "none"),
)


def output_records(
    cell: Mapping[str, Any],
    judged: SteeringOutputs,
    second: Sequence[tuple[str | None, float]],
    *,
    gains: Sequence[float] | None = None,
    extra: Mapping[str, Sequence[float]] | None = None,
) -> list[dict[str, Any]]:
    """One record per output of a judged batch.

    Args:
        cell: The fields every record of the batch shares (``phase``, ``setting``,
            ``method``, ``config``, ``seed``, ``target``).
        judged: The batch judged by :func:`~tl_lape.judging.outputs.judge_outputs`.
        second: The second language judge's (language, confidence) per output.
        gains: The content judge's gain per output (content setting only).
        extra: More scores per output, by field name (e.g. the judge-free content measure's
            ``reference_nll``).

    Returns:
        Dicts with the cell's fields, ``prompt_index``, ``prompt``, ``text``, ``language`` and
        ``language_confidence`` (the first identifier), ``lingua`` and ``lingua_confidence``,
        ``nll``, ``repetition``, ``coverage``, ``text_fluent``, ``fluent``, ``success`` and,
        with ``gains``, ``content_gain``.
    """
    target = cell.get("target")
    out = []
    for i, text in enumerate(judged.texts):
        record: dict[str, Any] = {
            **cell,
            "prompt_index": i,
            "prompt": judged.prompts[i],
            "text": text,
            "language": judged.languages[i],
            "language_confidence": _round(judged.confidence[i]) if judged.confidence else None,
            "lingua": second[i][0],
            "lingua_confidence": _round(second[i][1]),
            "nll": _round(float(judged.nll[i])),
            "repetition": _round(float(judged.repetition[i])),
            "coverage": _round(judged.coverage[i]) if judged.coverage else None,
            "text_fluent": judged.text_fluent[i] if judged.text_fluent else None,
            "fluent": judged.fluent[i],
            "success": judged.languages[i] == target and judged.fluent[i],
        }
        if gains is not None:
            record["content_gain"] = _round(gains[i])
        for name, values in (extra or {}).items():
            record[name] = _round(float(values[i]))
        out.append(record)
    return out


def _round(x: float) -> float | None:
    """Four decimals for the JSON file; NaN (an empty output's NLL) becomes None."""
    return None if x != x else round(float(x), 4)


def choose_examples(
    records: Iterable[Mapping[str, Any]], *, n_random: int = 1
) -> dict[str, list[dict[str, Any]]]:
    """Per (setting, configuration, target) of ``records``, the outputs a report quotes.

    ``n_random`` outputs drawn by a ``random.Random`` seeded with the cell's name, then the
    weakest success (the success with the highest unsteered NLL), when there is one and it
    was not drawn already. Each example is its record with ``rule``: ``"random"`` or
    ``"weakest success"``.
    """
    cells: dict[str, list[Mapping[str, Any]]] = {}
    for r in records:
        cells.setdefault(f"{r['setting']} / {r['config']} / {r['target']}", []).append(r)
    out: dict[str, list[dict[str, Any]]] = {}
    for key, rows in cells.items():
        drawn = random.Random(key).sample(range(len(rows)), min(n_random, len(rows)))
        chosen = [{**rows[i], "rule": "random"} for i in drawn]
        wins = [i for i, r in enumerate(rows) if r["success"] and i not in drawn]
        if wins:
            worst = max(wins, key=lambda i: _nll_key(rows[i]))
            chosen.append({**rows[worst], "rule": "weakest success"})
        out[key] = chosen
    return out


def _nll_key(record: Mapping[str, Any]) -> float:
    nll = record.get("nll")
    return float("inf") if nll is None else float(nll)


def _per_prompt(
    records: Iterable[Mapping[str, Any]], key: str = "success", **where: Any
) -> dict[tuple[str, int], float]:
    """Mean ``key`` per (target, prompt) over the records matching ``where`` (the mean over a
    method's configurations, e.g. its random draws); records without a value are left out."""
    sums: dict[tuple[str, int], list[float]] = {}
    for r in records:
        value = r.get(key)
        if value is not None and all(r.get(k) == v for k, v in where.items()):
            sums.setdefault((r["target"], int(r["prompt_index"])), []).append(float(value))
    return {k: sum(v) / len(v) for k, v in sums.items()}


def _estimate(
    values: dict[tuple[str, int], float], targets: Sequence[str], n_boot: int, seed: int
) -> Estimate:
    """Mean of ``values`` over the targets and prompts, with a bootstrap over prompts (all
    targets of a prompt drawn together)."""
    prompts = sorted({p for _, p in values})
    matrix = torch.tensor(
        [[values[(t, p)] for t in targets] for p in prompts], dtype=torch.float64
    )  # prompt target
    per_prompt = matrix.mean(1)  # prompt
    point = float(per_prompt.mean())
    if len(prompts) < 2:
        return Estimate(point, None, None, n=len(prompts))
    weights = bootstrap_weights(len(prompts), n_boot=n_boot, seed=seed)  # boot prompt
    replicates = (weights @ per_prompt) / weights.sum(1)  # boot
    return percentile_interval(replicates, point=point, n_units=len(prompts))


def _complete(values: dict[tuple[str, int], float], targets: Sequence[str]) -> bool:
    prompts = {p for _, p in values}
    return bool(prompts) and all((t, p) in values for t in targets for p in prompts)


def success_estimates(
    records: Sequence[Mapping[str, Any]],
    *,
    phase: str = "fresh",
    key: str = "success",
    n_boot: int = DEFAULT_N_BOOT,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """Success (or another per-output score, ``key``) with a bootstrap interval over prompts,
    per (setting, configuration, target) and per (setting, configuration) averaged over
    targets (``target="mean"``, clustered by prompt).

    Returns:
        Dicts with ``setting``, ``method``, ``config``, ``target`` and ``estimate`` (an
        :class:`~tl_lape.intervals.Estimate`).
    """
    rows = [r for r in records if r["phase"] == phase]
    out = []
    for setting in dict.fromkeys(r["setting"] for r in rows):
        here = [r for r in rows if r["setting"] == setting]
        for config in dict.fromkeys(r["config"] for r in here):
            mine = [r for r in here if r["config"] == config]
            method = mine[0]["method"]
            values = _per_prompt(mine, key)
            targets = list(dict.fromkeys(r["target"] for r in mine))
            for target in [*targets, "mean"]:
                chosen = targets if target == "mean" else [target]
                if not _complete(values, chosen):
                    continue
                out.append(
                    {
                        "setting": setting,
                        "method": method,
                        "config": config,
                        "target": target,
                        "estimate": _estimate(values, chosen, n_boot, seed),
                    }
                )
    return out


def paired_differences(
    records: Sequence[Mapping[str, Any]],
    *,
    pairs: Sequence[tuple[str, str]] = METHOD_PAIRS,
    phase: str = "fresh",
    key: str = "success",
    n_boot: int = DEFAULT_N_BOOT,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """The difference in success (or another per-output score, ``key``) between two methods
    on the same prompts, per target and averaged over targets (``target="mean"``), with a
    paired bootstrap over prompts.

    Returns:
        Dicts with ``setting``, ``first``, ``second``, ``target`` and ``estimate`` (first minus
        second, in success-rate units).
    """
    rows = [r for r in records if r["phase"] == phase]
    out = []
    for setting in dict.fromkeys(r["setting"] for r in rows):
        here = [r for r in rows if r["setting"] == setting]
        for first, second in pairs:
            a = _per_prompt(here, key, method=first)
            b = _per_prompt(here, key, method=second)
            shared = sorted(set(a) & set(b))
            if not shared:
                continue
            diff = {k: a[k] - b[k] for k in shared}
            targets = list(dict.fromkeys(t for t, _ in shared))
            for target in [*targets, "mean"]:
                chosen = targets if target == "mean" else [target]
                if not _complete(diff, chosen):
                    continue
                out.append(
                    {
                        "setting": setting,
                        "first": first,
                        "second": second,
                        "target": target,
                        "estimate": _estimate(diff, chosen, n_boot, seed),
                    }
                )
    return out
