"""The judge-free content measure: teacher-forced NLL of the reference translation after its
own prompt against after a mismatched one (``tl_lape.judging.continuation``)."""

import random

import pytest
import torch

from tl_lape import LapeError
from tl_lape._adapter import adapt
from tl_lape.experiments.steering_study import content_prompts
from tl_lape.intervals import bootstrap_weights, percentile_interval
from tl_lape.judging.continuation import content_nll, continuation_nll
from tl_lape.sources.corpora import PAPER_LANGUAGES, load_handbook_parallel
from tl_lape.sources.demo_model import load_demo_model


@pytest.fixture(scope="module")
def demo():
    return load_demo_model()


@pytest.fixture(scope="module")
def items():
    try:
        return load_handbook_parallel(PAPER_LANGUAGES, split="heldout")
    except LapeError as err:
        pytest.skip(f"debian-handbook unavailable: {err}")


def test_continuation_nll_matches_a_naive_loop(demo):
    """The oracle: the log-softmax of the full sequence's logits at the continuation's tokens."""
    adapter = adapt(demo, validate=False)
    prompt, cont = "The server starts", "le service réseau et attend."
    got = continuation_nll(demo, [prompt, "x"], [cont, "y z"], max_tokens=5)
    head = [adapter.bos_token_id, *adapter.encode(prompt).tolist()]
    tail = adapter.encode(" " + cont).tolist()[:5]
    tokens = torch.tensor([head + tail])
    with torch.inference_mode():
        logp = torch.log_softmax(demo(tokens).double(), dim=-1)[0]  # pos d_vocab
    naive = [-float(logp[len(head) - 1 + k, tail[k]]) for k in range(len(tail))]
    assert float(got[0]) == pytest.approx(sum(naive) / len(naive), rel=1e-3)


def test_a_hook_after_the_final_norm_scores_from_the_full_logits(demo):
    """Only the continuation's rows are unembedded, unless a hook acts after the final norm:
    then the full logits are used (and the hook runs). Both give the same numbers."""
    adapter = adapt(demo, validate=False)
    after = adapter.hooks_after_final_residual()
    assert after
    calls = []

    def identity(act, *, hook):
        calls.append(hook.name)
        return act

    prompts, conts = ["The server starts", "x"], ["le service réseau et attend.", "y z"]
    fast = continuation_nll(demo, prompts, conts, max_tokens=5)
    full = continuation_nll(demo, prompts, conts, max_tokens=5, fwd_hooks=[(after[0], identity)])
    assert calls == [after[0]]
    torch.testing.assert_close(fast, full, rtol=1e-5, atol=1e-6)


def test_hooks_change_the_nll_and_no_hooks_change_nothing(demo):
    prompts, conts = ["To install a package"], ["il faut utiliser apt."]
    plain = continuation_nll(demo, prompts, conts)
    assert torch.equal(plain, continuation_nll(demo, prompts, conts, fwd_hooks=()))

    def zero(act, *, hook):
        return act * 0.0

    hooked = continuation_nll(demo, prompts, conts, fwd_hooks=[("blocks.1.hook_resid_pre", zero)])
    assert not torch.allclose(plain, hooked)


def test_hooks_from_the_continuation_on_match_one_sequence_at_a_time(demo):
    """A function of the continuation's start (``positions="new"`` in teacher forcing): rows of
    different prompt lengths are batched by length and come back in order; each equals the row
    run alone with hooks at ``slice(start, None)``; the first continuation token, predicted from
    the unsteered prompt, is unchanged."""
    adapter = adapt(demo, validate=False)
    prompts = ["To install a package", "x", "The server starts the network service", "A b"]
    conts = ["il faut utiliser apt.", "y z w", "le service réseau et attend.", "c d e f"]
    seen: list[int] = []

    def from_start(start: int):
        seen.append(start)

        def scale(act, *, hook):
            act[:, start:] = act[:, start:] * 0.5
            return act

        return [("blocks.1.hook_resid_pre", scale)]

    got = continuation_nll(demo, prompts, conts, fwd_hooks=from_start, batch_size=2)
    heads = [1 + len(adapter.encode(p)) for p in prompts]
    assert sorted(set(seen)) == sorted(set(heads))
    for i, (prompt, cont) in enumerate(zip(prompts, conts, strict=True)):
        alone = continuation_nll(demo, [prompt], [cont], fwd_hooks=from_start(heads[i]))
        assert float(got[i]) == pytest.approx(float(alone[0]), rel=1e-5)
    plain = continuation_nll(demo, prompts, conts)
    assert not torch.allclose(plain, got)
    first = continuation_nll(demo, prompts, conts, fwd_hooks=from_start, max_tokens=1)
    assert torch.allclose(first, continuation_nll(demo, prompts, conts, max_tokens=1))


def test_the_own_prompt_makes_the_translation_likelier_on_average(demo, items):
    """On the unsteered demo model, pooled over six target languages, each reference is on
    average likelier after its own English prompt than after another item's. Measured on the
    28 held-out paragraphs: +0.046 nats per token, 58% of (paragraph, language) pairs; the 95%
    bootstrap interval over paragraphs (their six translations drawn together) is
    [-0.019, +0.107], so the demo model, never trained to translate, does NOT show the
    separation with confidence. The study therefore reports this check on its own model
    (``SteeringStudy`` says whether the unsteered gap's interval lies above 0) before the
    measure is read."""
    prompts = content_prompts(items)
    gaps = []
    for lang in [x for x in PAPER_LANGUAGES if x != "en"]:
        gaps.append(content_nll(demo, prompts, [item[lang] for item in items]).gap)
    gap = torch.stack(gaps, 1)  # item lang
    per_item = gap.mean(1)  # item
    weights = bootstrap_weights(len(items), n_boot=2000, seed=0)  # boot item
    est = percentile_interval(
        (weights @ per_item) / weights.sum(1), point=float(per_item.mean()), n_units=len(items)
    )
    assert est.value > 0.02, est
    assert float((gap > 0).double().mean()) > 0.53


def test_a_shuffled_translation_is_less_likely_than_the_translation(demo, items):
    rng = random.Random(0)
    prompts = content_prompts(items[:12])
    refs = [item["fr"] for item in items[:12]]
    shuffled = []
    for ref in refs:
        words = ref.split()
        rng.shuffle(words)
        shuffled.append(" ".join(words))
    own = continuation_nll(demo, prompts, refs)
    mixed = continuation_nll(demo, prompts, shuffled)
    assert bool((mixed > own + 0.5).all()), (own, mixed)


def test_content_nll_bad_input(demo):
    with pytest.raises(LapeError, match="at least two items"):
        content_nll(demo, ["a"], ["b"])
    with pytest.raises(LapeError, match="one reference per prompt"):
        content_nll(demo, ["a", "b", "c"], ["b", "c"])
    with pytest.raises(LapeError, match="max_tokens must be an int"):
        continuation_nll(demo, ["a"], ["b"], max_tokens=0)
    scores = content_nll(demo, ["The disk", "The network"], ["le disque", "le réseau"])
    assert set(scores.to_dict()) == {"own", "mismatched", "mean_own", "mean_gap", "separation_rate"}
