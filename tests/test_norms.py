"""What a steering intervention adds to the residual stream, and norm-matched random controls."""

import pytest
import torch
from tiny_models import CORPUS

from tl_lape import LapeError
from tl_lape._adapter import adapt
from tl_lape.collection.engine import collect_activation_stats
from tl_lape.interventions.diffmean import diffmean_hooks, diffmean_vectors
from tl_lape.interventions.hooks import steering_hooks
from tl_lape.interventions.norms import added_norm, matched_strength
from tl_lape.neurons import random_matched_neurons
from tl_lape.selection import identify_language_neurons

PROMPTS = ["The cat sat", "Le chat", "猫が"]


@pytest.fixture(scope="module")
def gpt2(tiny_model):
    return tiny_model("gpt2").bridge


@pytest.fixture(scope="module")
def gpt2_collected(gpt2):
    stats, means = collect_activation_stats(
        gpt2, CORPUS, seq_len=16, progress=False, residual_means=True
    )
    return stats, means, identify_language_neurons(stats, top_rate=0.1)


def test_diffmean_adds_the_sum_of_its_layer_vectors_at_every_position(gpt2, gpt2_collected):
    _, means, _ = gpt2_collected
    lang = means.languages[1]
    for normalize, strength in ((False, 2.0), (True, 3.0)):
        hooks = diffmean_hooks(means, lang, layer=[0, 1], strength=strength, normalize=normalize)
        vectors = diffmean_vectors(
            means, lang, layer=[0, 1], strength=strength, normalize=normalize
        )
        expected = float((vectors[0] + vectors[1]).norm())
        assert added_norm(gpt2, hooks, PROMPTS) == pytest.approx(expected, rel=1e-5)
    assert added_norm(gpt2, [], PROMPTS) == 0.0
    zero = diffmean_hooks(means, lang, layer=0, strength=0.0)
    assert added_norm(gpt2, zero, PROMPTS) == 0.0


def test_lape_add_on_a_plain_mlp_adds_strength_times_mean_times_w_out(gpt2, gpt2_collected):
    """Non-gated ``add``: each neuron's activation grows by strength x its mean, so the residual
    stream gets sum over neurons of that times the neuron's W_out row, the same everywhere."""
    stats, _, neurons = gpt2_collected
    lang, strength = stats.languages[0], 1.5
    hooks = steering_hooks(neurons, stats, lang, mode="add", strength=strength, model=gpt2)
    adapter = adapt(gpt2)
    total = torch.zeros(gpt2.cfg.d_model)
    for layer in range(neurons.n_layers):
        idx = neurons.indices(lang, layer)
        mean = stats.mean_activations[layer, idx, stats.languages.index(lang)].float()
        total += strength * mean @ adapter.neuron_output_weights(layer, idx)
    assert added_norm(gpt2, hooks, PROMPTS) == pytest.approx(float(total.norm()), rel=1e-4)


def test_random_neuron_control_at_the_matched_strength_adds_the_same_norm(llama, stats, neurons):
    """On a gated MLP the added vector depends on the input; the secant search still finds the
    random set's strength that adds LAPE's norm on the same prompts, and the unmatched random
    set at LAPE's own strength adds a different one."""
    model, lang = llama.bridge, stats.languages[1]
    target = added_norm(
        model, steering_hooks(neurons, stats, lang, mode="add", strength=2.0), PROMPTS
    )
    control = random_matched_neurons(neurons, seed=0)

    def make(s):
        return steering_hooks(control, stats, lang, mode="add", strength=s, model=model)

    unmatched = added_norm(model, make(2.0), PROMPTS)
    strength, got = matched_strength(model, make, target, PROMPTS, start=2.0)
    assert got == pytest.approx(target, rel=0.02)
    assert abs(unmatched - target) > 0.05 * target  # matching changed something
    assert added_norm(model, make(strength), PROMPTS) == pytest.approx(got)
    with pytest.raises(LapeError, match="target_norm must be a finite number; received nan"):
        matched_strength(model, make, float("nan"), PROMPTS, start=1.0)


def test_added_norm_refuses_hooks_it_cannot_measure(gpt2):
    with pytest.raises(LapeError, match=r"cannot say what a hook at 'blocks.0.attn.hook_z'"):
        added_norm(gpt2, [("blocks.0.attn.hook_z", lambda act, hook: act)], PROMPTS)
    with pytest.raises(LapeError, match=r"prompts must be non-empty texts.*received \[\]"):
        added_norm(gpt2, [], [])
