"""``tl_lape.deactivated`` and ``tl_lape.steered``: hook lists scoped to a ``with`` block."""

import pytest
import torch

import tl_lape
from tl_lape import LanguageNeurons, LapeError, deactivation_hooks, steering_hooks
from tl_lape.stats import ActivationStats

N_LAYERS, D_MLP = 2, 64
MAX_NEW = 6


@pytest.fixture(scope="module")
def setup(tiny_model):
    bridge = tiny_model("llama").bridge
    gen = torch.Generator().manual_seed(3)
    neurons = LanguageNeurons.from_indices(
        {
            lang: {layer: torch.randperm(D_MLP, generator=gen)[:12] for layer in range(N_LAYERS)}
            for lang in ("en", "fr")
        },
        n_layers=N_LAYERS,
        d_mlp=D_MLP,
    )
    sums = torch.randn(N_LAYERS, D_MLP, 2, generator=gen, dtype=torch.float64) * 40
    stats = ActivationStats.from_counts(
        torch.zeros(N_LAYERS, D_MLP, 2, dtype=torch.long),
        [20, 20],
        ["en", "fr"],
        activation_sums=sums,
    )
    tokens = bridge.to_tokens("The cat sat on the warm mat.")
    return bridge, neurons, stats, tokens


def attached(bridge) -> int:
    """Forward hooks attached to the model (hook_dict lists some hook points under two names)."""
    points = {id(hp): hp for hp in bridge.hook_dict.values()}
    return sum(len(hp.fwd_hooks) for hp in points.values())


def generate(bridge, tokens):
    return bridge.generate(
        tokens,
        max_new_tokens=MAX_NEW,
        do_sample=False,
        use_past_kv_cache=True,
        stop_at_eos=False,
        verbose=False,
        return_type="tokens",
    )


def test_deactivated_equals_its_hooks_and_detaches(setup):
    bridge, neurons, _, tokens = setup
    expected = bridge.run_with_hooks(tokens, fwd_hooks=deactivation_hooks(neurons, "fr"))
    clean = bridge(tokens)
    with tl_lape.deactivated(bridge, neurons, "fr") as model:
        assert model is bridge
        assert attached(bridge) == N_LAYERS
        got = bridge(tokens)
    assert torch.equal(got, expected)
    assert not torch.equal(got, clean)
    assert attached(bridge) == 0
    assert torch.equal(bridge(tokens), clean)
    assert "generate" not in vars(bridge)


def test_steered_equals_its_hooks(setup):
    bridge, neurons, stats, tokens = setup
    kwargs = {"mode": "add", "strength": 4.0, "deactivate": ["en"]}
    hooks = steering_hooks(neurons, stats, "fr", **kwargs, model=bridge)
    expected = bridge.run_with_hooks(tokens, fwd_hooks=hooks)
    with tl_lape.steered(bridge, neurons, stats, "fr", **kwargs):
        got = bridge(tokens)
    assert torch.equal(got, expected)
    assert attached(bridge) == 0


def test_steered_new_positions_are_fresh_for_every_generate_call(setup):
    bridge, neurons, stats, tokens = setup
    one = tokens[:, :1]  # BOS alone: would read as a decoding step of the previous generation

    def fresh(prompt):
        hooks = steering_hooks(
            neurons, stats, "fr", mode="add", strength=8.0, model=bridge, positions="new"
        )
        with bridge.hooks(fwd_hooks=hooks):
            return generate(bridge, prompt)

    expected = [fresh(tokens), fresh(one), fresh(tokens)]
    with tl_lape.steered(
        bridge, neurons, stats, "fr", mode="add", strength=8.0, positions="new"
    ) as model:
        got = [generate(model, tokens), generate(model, one), generate(model, tokens)]
        # generate_with_hooks inside the block goes through the same reset.
        texts = tl_lape.generate_with_hooks(model, ["", "The cat"], max_new_tokens=MAX_NEW)
    assert all(torch.equal(a, b) for a, b in zip(got, expected, strict=True))
    assert texts == [
        tl_lape.generate_with_hooks(
            bridge,
            [p],
            fwd_hooks=steering_hooks(
                neurons, stats, "fr", mode="add", strength=8.0, model=bridge, positions="new"
            ),
            max_new_tokens=MAX_NEW,
        )[0]
        for p in ["", "The cat"]
    ]
    # Positions "new": the prompt pass is not steered.
    plain = bridge(tokens)[:, -1].argmax(-1)
    assert got[0][0, tokens.shape[1]] == plain[0]
    assert attached(bridge) == 0
    assert "generate" not in vars(bridge)


def test_composes_and_nests_with_user_hooks(setup):
    bridge, neurons, stats, tokens = setup
    outer: list[torch.Tensor] = []
    inner: list[torch.Tensor] = []

    def recorder(seen):
        def record(act, *, hook):
            seen.append(act.clone())

        return record

    name = "blocks.1.mlp.hook_post"
    deact = deactivation_hooks(neurons, "en", model=bridge)
    steer = steering_hooks(neurons, stats, "fr", mode="add", strength=4.0, model=bridge)
    both = bridge.run_with_hooks(tokens, fwd_hooks=deact + steer)
    only_deact = bridge.run_with_hooks(tokens, fwd_hooks=deact)
    _, cache = bridge.run_with_cache(tokens, names_filter=lambda n: n == name)
    with bridge.hooks(fwd_hooks=[(name, recorder(outer))]):
        with tl_lape.deactivated(bridge, neurons, "en"):
            with tl_lape.steered(bridge, neurons, stats, "fr", mode="add", strength=4.0):
                with bridge.hooks(fwd_hooks=[(name, recorder(inner))]):
                    assert torch.equal(bridge(tokens), both)
                assert attached(bridge) == 1 + len(deact) + len(steer)
            assert attached(bridge) == 1 + len(deact)
            assert torch.equal(bridge(tokens), only_deact)
        assert attached(bridge) == 1
        bridge(tokens)
    assert attached(bridge) == 0
    # Hooks run in the order they were attached: the outer user hook before tl_lape's, which
    # see its output, and the inner user hook after them, seeing theirs.
    assert len(outer) == 3
    assert len(inner) == 1
    assert torch.equal(outer[2], cache[name])
    assert not torch.equal(outer[0], cache[name])  # layer 0's intervention reached layer 1
    en_only = neurons.indices("en", 1)[
        ~torch.isin(neurons.indices("en", 1), neurons.indices("fr", 1))
    ]
    assert en_only.numel()
    assert not bool(inner[0][..., en_only].any())  # zeroed by the outer deactivated block
    assert bool(outer[0][..., en_only].any())


def test_nothing_stays_attached_after_an_exception(setup):
    bridge, neurons, stats, _ = setup
    before = bridge.generate
    with (
        pytest.raises(RuntimeError, match="inside the block"),
        tl_lape.deactivated(bridge, neurons, ["en", "fr"], positions="new"),
        tl_lape.steered(bridge, neurons, stats, "fr", positions="prompt"),
    ):
        assert attached(bridge) > N_LAYERS
        assert bridge.generate != before
        raise RuntimeError("inside the block")
    assert attached(bridge) == 0
    assert "generate" not in vars(bridge)
    assert bridge.generate == before


def test_bad_input_attaches_nothing(setup):
    bridge, neurons, stats, _ = setup
    with (
        pytest.raises(LapeError, match=r"unknown languages \['de'\]"),
        tl_lape.deactivated(bridge, neurons, ["de"]),
    ):
        pass
    with (
        pytest.raises(LapeError, match=r"unknown target \['de'\]"),
        tl_lape.steered(bridge, neurons, stats, "de", positions="new"),
    ):
        pass
    wide = LanguageNeurons.from_indices({"fr": {0: [1]}}, n_layers=N_LAYERS, d_mlp=128)
    with (
        pytest.raises(LapeError, match=r"d_mlp=128, but the model has d_mlp=64"),
        tl_lape.deactivated(bridge, wide, "fr"),
    ):
        pass
    assert attached(bridge) == 0
    assert "generate" not in vars(bridge)


@pytest.mark.parametrize("order", ["first-entered-first", "last-entered-first"])
def test_exits_in_any_order_restore_the_model(setup, order):
    """Blocks closed out of order (ExitStack, generators) leave no stale ``generate`` wrapper."""
    bridge, neurons, stats, tokens = setup
    before = bridge.generate
    outer = tl_lape.deactivated(bridge, neurons, ["en"], positions="new")
    inner = tl_lape.steered(bridge, neurons, stats, "fr", mode="add", strength=8.0, positions="new")
    outer.__enter__()
    inner.__enter__()
    first, second = (outer, inner) if order == "first-entered-first" else (inner, outer)
    first.__exit__(None, None, None)
    # The block still open keeps its hooks, and its "new" positions are fresh at every generate.
    still = second is inner
    alone = (
        tl_lape.steered(bridge, neurons, stats, "fr", mode="add", strength=8.0, positions="new")
        if still
        else tl_lape.deactivated(bridge, neurons, ["en"], positions="new")
    )
    got = [generate(bridge, tokens), generate(bridge, tokens[:, :3])]
    second.__exit__(None, None, None)
    assert attached(bridge) == 0
    assert "generate" not in vars(bridge)
    assert bridge.generate == before
    with alone:
        want = [generate(bridge, tokens), generate(bridge, tokens[:, :3])]
    for g, w in zip(got, want, strict=True):
        assert torch.equal(g, w)
    assert "generate" not in vars(bridge)
