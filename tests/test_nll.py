"""Scoring a subset of positions (``window_nll(positions_per_window=k)``) against full scoring.

Equality tolerance: with every position scored through the subsampled path
(``positions_per_window = seq_len - 1``), totals and per-window sums came out bit-identical to the
full path on the tiny Llama-, GPT-2- and Gemma-like models and the demo model (measured gap 0.0,
float32 on an x86 CPU: the unembedding of a row does not depend on the other rows in the GEMM).
The tests allow ``RTOL = 1e-6`` relative (about eight float32 ulps), for BLAS kernels that block
rows differently; per-token values differ by at most a few ulps then, and the sums in float64.
"""

import inspect
from collections.abc import Iterator
from typing import Any

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from tl_lape.errors import LapeError
from tl_lape.judging import nll as nll_module
from tl_lape.judging.nll import next_token_nll, scored_positions, window_nll
from tl_lape.sources.demo_model import load_demo_model

#: Relative tolerance between the full and the all-positions subsampled path (measured: 0.0).
RTOL = 1e-6


@pytest.fixture(scope="module")
def demo() -> Any:
    return load_demo_model()


@pytest.fixture(params=["llama", "gpt2", "demo"])
def model(request: pytest.FixtureRequest, tiny_model: Any) -> Any:
    if request.param == "demo":
        return request.getfixturevalue("demo")
    return tiny_model(request.param).bridge


def _windows(model: Any, n: int, seq_len: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(3, int(model.cfg.d_vocab), (n, seq_len), generator=g)


def _zero_some_neurons(act: torch.Tensor, hook: Any) -> torch.Tensor:
    act[..., :8] = 0
    return act


def _hooks(model: Any) -> list[tuple[str, Any]]:
    return [("blocks.0.mlp.hook_post", _zero_some_neurons)]


def _per_token_nll(model: Any, windows: torch.Tensor, hooks: Any = ()) -> torch.Tensor:
    """Per-token NLL [window, pos-1] from the model's full logits (the reference)."""
    with torch.inference_mode():
        logits = model.run_with_hooks(windows, fwd_hooks=list(hooks))
    return next_token_nll(logits, windows).to(torch.float64)


# ---- (a) every position through the new path equals the full path


@pytest.mark.parametrize("with_hooks", [False, True])
def test_all_positions_equal_full_path(model: Any, with_hooks: bool) -> None:
    seq_len = 24
    w = _windows(model, 5, seq_len)
    hooks = _hooks(model) if with_hooks else []
    full_total, full_n = window_nll(model, w, fwd_hooks=hooks, batch_size=2)
    sub_total, sub_n = window_nll(
        model, w, fwd_hooks=hooks, batch_size=2, positions_per_window=seq_len - 1
    )
    assert sub_n == full_n == 5 * (seq_len - 1)
    assert sub_total == pytest.approx(full_total, rel=RTOL)
    full_sums, full_counts = window_nll(model, w, fwd_hooks=hooks, batch_size=2, per_window=True)
    sub_sums, sub_counts = window_nll(
        model,
        w,
        fwd_hooks=hooks,
        batch_size=2,
        positions_per_window=seq_len - 1,
        per_window=True,
    )
    assert full_sums.dtype == sub_sums.dtype == torch.float64
    assert full_counts.dtype == sub_counts.dtype == torch.int64
    assert full_counts.tolist() == sub_counts.tolist() == [seq_len - 1] * 5
    torch.testing.assert_close(sub_sums, full_sums, rtol=RTOL, atol=0)
    assert float(full_sums.sum()) == pytest.approx(full_total, rel=1e-12)
    # A larger k than there are positions scores every position too.
    assert window_nll(model, w, fwd_hooks=hooks, positions_per_window=1000) == pytest.approx(
        (full_total, full_n), rel=RTOL
    )


def test_subsampled_sums_are_the_full_nll_at_the_scored_positions(model: Any) -> None:
    seq_len, k = 20, 5
    w = _windows(model, 4, seq_len, seed=1)
    hooks = _hooks(model)
    reference = _per_token_nll(model, w, hooks)  # window pos-1
    positions = scored_positions(range(4), seq_len, k, seed=7)
    sums, counts = window_nll(
        model, w, fwd_hooks=hooks, positions_per_window=k, seed=7, per_window=True, batch_size=3
    )
    torch.testing.assert_close(sums, reference.gather(1, positions).sum(1), rtol=1e-5, atol=1e-6)
    assert counts.tolist() == [k] * 4


def test_soft_capped_logits_match(tmp_path: Any) -> None:
    """A model with a final logit soft cap (Gemma 2 style): the cap is applied to the rows."""
    import transformers
    from tiny_models import build_tokenizer
    from transformer_lens.model_bridge import TransformerBridge

    tokenizer = build_tokenizer()
    config = transformers.Gemma2Config(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=1,
        head_dim=8,
        max_position_embeddings=64,
        final_logit_softcapping=2.0,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    )
    torch.manual_seed(0)
    hf = transformers.AutoModelForCausalLM.from_config(config, attn_implementation="eager")
    with torch.no_grad():
        for p in hf.parameters():
            if p.dim() >= 2:
                p.normal_(0.0, 0.2)
    hf.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    bridge = TransformerBridge.boot_transformers(str(tmp_path), device="cpu").eval()
    assert bridge.cfg.output_logits_soft_cap == 2.0
    w = _windows(bridge, 3, 16)
    full = window_nll(bridge, w)
    assert window_nll(bridge, w, positions_per_window=15) == pytest.approx(full, rel=RTOL)
    # The cap matters here: logits without it would score differently.
    with torch.inference_mode():
        logits = bridge(w)
    assert float(logits.abs().max()) < 2.0


def test_readout_mismatch_is_refused(tiny_model: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """A model whose logits are not the unembedding of the final norm: no silent wrong NLL."""
    bridge = tiny_model("llama").bridge
    monkeypatch.setattr(nll_module, "_READOUT_CHECKED", type(nll_module._READOUT_CHECKED)())
    monkeypatch.setattr(bridge.cfg, "output_logits_soft_cap", 0.5)  # the HF model has none
    w = _windows(bridge, 2, 8)
    with pytest.raises(LapeError, match="pass positions_per_window=None") as info:
        window_nll(bridge, w, positions_per_window=3)
    assert "largest gap" in str(info.value)


# ---- (b) the subsampled per-token mean is unbiased over seeds


def test_subsampled_mean_is_unbiased_over_seeds(tiny_model: Any) -> None:
    bridge = tiny_model("llama").bridge
    seq_len, k, n_seeds = 32, 3, 120
    w = _windows(bridge, 6, seq_len, seed=2)
    total, n = window_nll(bridge, w)
    full_mean = total / n
    estimates = []
    for seed in range(n_seeds):
        s, c = window_nll(bridge, w, positions_per_window=k, seed=seed, batch_size=6)
        assert c == 6 * k
        estimates.append(s / c)
    est = torch.tensor(estimates, dtype=torch.float64)
    se = float(est.std()) / n_seeds**0.5
    assert se > 0  # the seeds really choose different positions
    assert abs(float(est.mean()) - full_mean) < 4 * se


def test_positions_are_uniform() -> None:
    seq_len, k, n_windows = 17, 4, 4000
    pos = scored_positions(range(n_windows), seq_len, k, seed=3)
    assert pos.shape == (n_windows, k)
    assert bool((pos[:, 1:] > pos[:, :-1]).all())  # sorted, without replacement
    assert int(pos.min()) >= 0 and int(pos.max()) <= seq_len - 2
    freq = torch.bincount(pos.reshape(-1), minlength=seq_len - 1).double() / n_windows
    p = k / (seq_len - 1)
    se = (p * (1 - p) / n_windows) ** 0.5
    assert float((freq - p).abs().max()) < 5 * se


# ---- (c) determinism and pairing


def test_same_seed_is_identical_and_seeds_differ(tiny_model: Any) -> None:
    bridge = tiny_model("gpt2").bridge
    w = _windows(bridge, 5, 24, seed=4)
    a = window_nll(bridge, w, positions_per_window=4, seed=11, per_window=True)
    b = window_nll(bridge, w, positions_per_window=4, seed=11, per_window=True)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    c = window_nll(bridge, w, positions_per_window=4, seed=12, per_window=True)
    assert not torch.equal(a[0], c[0])
    # The batch size does not change which positions a window scores.
    d = window_nll(bridge, w, positions_per_window=4, seed=11, per_window=True, batch_size=1)
    torch.testing.assert_close(d[0], a[0], rtol=1e-6, atol=0)


def test_positions_depend_on_seed_and_window_index_only() -> None:
    all_rows = scored_positions(range(6), 40, 5, seed=9)
    assert torch.equal(scored_positions([3], 40, 5, seed=9)[0], all_rows[3])
    assert torch.equal(scored_positions(torch.tensor([5, 0]), 40, 5, seed=9), all_rows[[5, 0]])
    assert torch.equal(scored_positions(range(6), 40, 5, seed=9), all_rows)
    assert not torch.equal(scored_positions(range(6), 40, 5, seed=10), all_rows)
    assert len({tuple(r) for r in all_rows.tolist()}) > 1  # windows differ from each other


def test_pairing_hooks_do_not_move_the_positions(tiny_model: Any) -> None:
    """Clean and intervened rows score the same positions: each equals its own full NLL there."""
    bridge = tiny_model("llama").bridge
    seq_len, k, seed = 20, 4, 5
    w = _windows(bridge, 4, seq_len, seed=6)
    positions = scored_positions(range(4), seq_len, k, seed=seed)
    for hooks in ([], _hooks(bridge)):
        sums, _ = window_nll(
            bridge, w, fwd_hooks=hooks, positions_per_window=k, seed=seed, per_window=True
        )
        expected = _per_token_nll(bridge, w, hooks).gather(1, positions).sum(1)
        torch.testing.assert_close(sums, expected, rtol=1e-5, atol=1e-6)
    clean = window_nll(bridge, w, positions_per_window=k, seed=seed, per_window=True)[0]
    hooked = window_nll(
        bridge, w, fwd_hooks=_hooks(bridge), positions_per_window=k, seed=seed, per_window=True
    )[0]
    assert not torch.equal(clean, hooked)  # the hook acts, the positions stay


# ---- (d) the subsampled forward skips the full unembedding


@pytest.fixture
def unembed_calls(tiny_model: Any) -> Iterator[tuple[Any, list[str]]]:
    bridge = tiny_model("llama").bridge
    calls: list[str] = []
    modules = {"bridge.unembed": bridge.unembed, "hf.lm_head": bridge.original_model.lm_head}
    handles = [
        module.register_forward_hook(lambda *_, name=name: calls.append(name))
        for name, module in modules.items()
    ]
    yield bridge, calls
    for handle in handles:
        handle.remove()


def test_subsampled_forward_never_calls_the_unembedding(
    unembed_calls: tuple[Any, list[str]],
) -> None:
    bridge, calls = unembed_calls
    w = _windows(bridge, 3, 20)
    window_nll(bridge, w, positions_per_window=4)  # checks the readout once (a full forward)
    calls.clear()
    window_nll(bridge, w, positions_per_window=4, batch_size=2)
    assert calls == []
    window_nll(bridge, w, batch_size=2)
    assert calls.count("hf.lm_head") == 2  # the full path does call it, once per batch


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_subsampled_forward_saves_exactly_the_unscored_unembedding_flops(
    tiny_model: Any, arch: str
) -> None:
    bridge = tiny_model(arch).bridge
    n, seq_len, k = 3, 20, 4
    w = _windows(bridge, n, seq_len)
    window_nll(bridge, w, positions_per_window=k)  # readout check outside the count

    def flops(**kwargs: Any) -> int:
        with FlopCounterMode(display=False) as counter:
            window_nll(bridge, w, batch_size=2, **kwargs)
        return int(counter.get_total_flops())

    d_model, d_vocab = int(bridge.cfg.d_model), int(bridge.cfg.d_vocab)
    saved = flops() - flops(positions_per_window=k)
    assert saved == 2 * n * (seq_len - k) * d_model * d_vocab


# ---- (e) bad options


BAD_OPTIONS = [
    ({"positions_per_window": 0}, "positions_per_window must be a positive int; received 0"),
    ({"positions_per_window": -3}, "received -3"),
    ({"positions_per_window": 2.5}, "received 2.5"),
    ({"positions_per_window": True}, "received True"),
    ({"positions_per_window": "32"}, "received '32'"),
    ({"seed": -1}, "seed must be an integer between 0 and 2\\*\\*63 - 1; received -1"),
    ({"seed": 1.5}, "received 1.5"),
    ({"seed": 2**63}, f"received {2**63}"),
    ({"per_window": "yes"}, "per_window must be True or False; received 'yes'"),
    ({"batch_size": 0}, "batch_size must be a positive int; received 0"),
]


#: ``window_nll`` without the test suite's runtime type checker (jaxtyping + beartype, which
#: refuses a float or a str for an int before the function runs), as users call it.
unchecked_window_nll = inspect.unwrap(window_nll)


@pytest.mark.parametrize(("kwargs", "message"), BAD_OPTIONS)
def test_bad_options_are_refused_before_any_model_work(
    kwargs: dict[str, Any], message: str
) -> None:
    not_a_model = object()  # any model work would fail with another message
    with pytest.raises(LapeError, match=message) as info:
        unchecked_window_nll(not_a_model, torch.zeros(2, 8, dtype=torch.long), **kwargs)
    assert "pass e.g." in str(info.value)


@pytest.mark.parametrize(
    "windows", [torch.zeros(8, dtype=torch.long), torch.zeros(2, 8), [[1, 2, 3]]]
)
def test_bad_windows_are_refused(windows: Any) -> None:
    with pytest.raises(LapeError, match="windows must be a 2-D tensor of token ids") as info:
        unchecked_window_nll(object(), windows, positions_per_window=4)
    assert "received" in str(info.value)


def test_hooks_on_the_unembedding_are_refused_when_subsampling(tiny_model: Any) -> None:
    bridge = tiny_model("llama").bridge
    w = _windows(bridge, 2, 8)

    def scale(act: torch.Tensor, hook: Any) -> torch.Tensor:
        return act * 2

    with pytest.raises(LapeError, match=r"'unembed\.hook_out'.*positions_per_window=None"):
        window_nll(bridge, w, fwd_hooks=[("unembed.hook_out", scale)], positions_per_window=3)
    with pytest.raises(LapeError, match="positions_per_window=None"):
        window_nll(
            bridge,
            w,
            fwd_hooks=[(lambda name: name.startswith("unembed"), scale)],
            positions_per_window=3,
        )
    window_nll(bridge, w, fwd_hooks=[("unembed.hook_out", scale)])  # the full path runs it


def test_scored_positions_checks_its_arguments() -> None:
    with pytest.raises(LapeError, match="positions_per_window must be a positive int; received 0"):
        scored_positions([0], 8, 0)
    with pytest.raises(LapeError, match=r"seed must be .*received -2"):
        scored_positions([0], 8, 2, seed=-2)
    with pytest.raises(LapeError, match=r"window indices must be >= 0; received \[-1\]"):
        scored_positions([-1], 8, 2)


def test_per_window_of_no_windows_is_empty(tiny_model: Any) -> None:
    bridge = tiny_model("llama").bridge
    empty = torch.zeros(0, 8, dtype=torch.long)
    sums, counts = window_nll(bridge, empty, positions_per_window=3, per_window=True)
    assert sums.shape == counts.shape == (0,)
    assert window_nll(bridge, empty) == (0.0, 0)


@pytest.mark.slow
def test_quick_benchmark_runs(tmp_path: Any) -> None:
    """Keep ``benchmarks/bench_nll.py`` from rotting (no timing asserted)."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    script = repo / "benchmarks" / "bench_nll.py"
    proc = subprocess.run(
        [sys.executable, str(script), "--quick", "--output-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        cwd=repo,
        timeout=600,
        check=False,
    )
    if proc.returncode != 0 and "debian-handbook" in proc.stderr:
        pytest.skip("the Debian handbook is not available")
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((tmp_path / "results.json").read_text())
    (demo,) = result["models"]
    assert set(demo["rows"]) == {"full_clean", "full_deact", "sub_clean", "sub_deact"}
    assert demo["rows"]["sub_clean"]["tokens_scored"] == demo["n_windows"] * 8
    assert (tmp_path / "README.md").read_text().startswith("# NLL scoring")
