"""Records of a steering study's outputs: examples by rule, intervals over prompts, paired
differences between methods (no model needed)."""

import random

import pytest
import torch

from tl_lape.experiments.steering_records import (
    choose_examples,
    output_records,
    paired_differences,
    success_estimates,
)
from tl_lape.intervals import bootstrap_weights, percentile_interval
from tl_lape.judging.outputs import SteeringOutputs


def _records(method, outcomes, *, target="fr", setting="english", config=None, nll=None):
    return [
        {
            "phase": "fresh",
            "setting": setting,
            "method": method,
            "config": config or method,
            "target": target,
            "prompt_index": i,
            "text": f"{method} {target} {i}",
            "success": bool(s),
            "nll": None if nll is None else nll[i],
        }
        for i, s in enumerate(outcomes)
    ]


def test_output_records_keep_every_verdict():
    judged = SteeringOutputs(
        prompts=("a", "b"),
        texts=("Le chat dort.", "打印打印打印"),
        languages=("fr", "zh"),
        nll=torch.tensor([2.0, float("nan")], dtype=torch.float64),
        repetition=torch.tensor([0.0, 0.5], dtype=torch.float64),
        fluent=(True, False),
        confidence=(0.9, 0.6),
        coverage=(0.0, 1.0),
        text_fluent=(True, False),
    )
    cell = {"phase": "fresh", "setting": "english", "method": "lape", "config": "x", "target": "fr"}
    out = output_records(cell, judged, [("fr", 0.8), ("other", 0.1)], gains=[1.5, -2.0])
    assert [r["success"] for r in out] == [True, False]
    assert out[0]["prompt"] == "a" and out[1]["lingua"] == "other"
    assert out[1]["nll"] is None and out[1]["text_fluent"] is False
    assert out[0]["content_gain"] == 1.5 and out[0]["language_confidence"] == 0.9
    assert all(r["config"] == "x" and r["target"] == "fr" for r in out)


def test_examples_are_chosen_by_rule_not_by_position():
    records = _records("lape", [1, 0, 1, 1, 0, 1], nll=[1.0, 9.0, 4.0, 2.0, 8.0, 3.0])
    chosen = choose_examples(records)
    key = "english / lape / fr"
    assert list(chosen) == [key]
    rules = [x["rule"] for x in chosen[key]]
    assert rules[0] == "random"
    drawn = random.Random(key).sample(range(6), 1)[0]
    assert chosen[key][0]["prompt_index"] == drawn
    # The weakest success: the success with the highest NLL (prompt 2, NLL 4.0), unless drawn.
    if drawn != 2:
        assert rules == ["random", "weakest success"] and chosen[key][1]["prompt_index"] == 2
    assert choose_examples(records) == chosen  # the same study quotes the same outputs
    none_won = choose_examples(_records("none", [0, 0, 0], nll=[1.0, 2.0, 3.0]))
    assert [x["rule"] for x in none_won["english / none / fr"]] == ["random"]


def test_success_interval_is_a_bootstrap_over_prompts():
    outcomes = [1, 0, 1, 1, 0, 1, 1, 0]
    est = success_estimates(_records("lape", outcomes), n_boot=500, seed=3)
    per_target = next(x for x in est if x["target"] == "fr")["estimate"]
    assert per_target.value == pytest.approx(sum(outcomes) / len(outcomes))
    # The oracle: the library's weights applied by hand.
    values = torch.tensor(outcomes, dtype=torch.float64)
    w = bootstrap_weights(len(outcomes), n_boot=500, seed=3)
    expected = percentile_interval((w @ values) / w.sum(1), point=0.625, n_units=8)
    assert (per_target.low, per_target.high) == (expected.low, expected.high)
    assert per_target.low < per_target.value < per_target.high


def test_the_mean_over_targets_is_clustered_by_prompt():
    """Targets share prompts: copies of one target's outcomes give the mean the same interval
    as one target (an unclustered bootstrap would pretend to twice the data)."""
    outcomes = [1, 0, 1, 1, 0, 0, 1, 0]
    records = _records("lape", outcomes, target="fr") + _records("lape", outcomes, target="zh")
    est = {x["target"]: x["estimate"] for x in success_estimates(records, n_boot=500)}
    assert (est["mean"].low, est["mean"].high) == (est["fr"].low, est["fr"].high)
    assert est["mean"].n == 8


def test_one_prompt_gives_no_interval_never_zero_width():
    est = success_estimates(_records("lape", [1]))[0]["estimate"]
    assert est.low is None and est.high is None and est.format(2) == "1.00 ± n/a"
    diff = paired_differences(_records("lape", [1]) + _records("none", [0]))[0]["estimate"]
    assert diff.value == 1.0 and not diff.has_interval


def test_paired_differences_pair_prompts_and_average_random_draws():
    lape = _records("lape", [1, 1, 1, 0, 1, 1])
    draws = _records("random", [0, 1, 0, 0, 0, 0], config="random seed=0") + _records(
        "random", [0, 0, 0, 0, 1, 0], config="random seed=1"
    )
    out = paired_differences(lape + draws, pairs=[("lape", "random")], n_boot=400)
    fr = next(x for x in out if x["target"] == "fr")["estimate"]
    # Per prompt: lape minus the mean of the two draws.
    per_prompt = torch.tensor([1, 0.5, 1, 0, 0.5, 1], dtype=torch.float64)
    assert fr.value == pytest.approx(float(per_prompt.mean()))
    w = bootstrap_weights(6, n_boot=400, seed=0)
    expected = percentile_interval((w @ per_prompt) / w.sum(1), point=fr.value, n_units=6)
    assert (fr.low, fr.high) == (expected.low, expected.high)
    same = paired_differences(lape + _records("none", [1, 1, 1, 0, 1, 1]), pairs=[("lape", "none")])
    assert same[0]["estimate"].value == 0.0
    assert paired_differences(lape, pairs=[("lape", "diffmean")]) == []
