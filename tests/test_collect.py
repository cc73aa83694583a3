"""collect_activation_stats against counts computed by hand from the Hugging Face modules."""

import pytest
import torch
from tiny_models import ARCHITECTURES, SENTENCES, hf_count_by_hand

from tl_lape import LapeError
from tl_lape._adapter import adapt
from tl_lape.collection.engine import collect_activation_stats
from tl_lape.collection.windows import WindowSettings, iter_window_batches


def random_ids(n: int, seed: int, d_vocab: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(3, d_vocab, (n,), generator=gen)


def token_corpus(bridge, sizes: dict[str, int]) -> dict[str, torch.Tensor]:
    d_vocab = bridge.cfg.d_vocab
    return {lang: random_ids(n, seed, d_vocab) for seed, (lang, n) in enumerate(sizes.items())}


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_counts_equal_hand_computation(tiny_model, arch):
    tm = tiny_model(arch)
    seq_len = 8
    corpus = token_corpus(tm.bridge, {"en": 43, "fr": 24})  # en: 5 windows + 3 dropped
    stats = collect_activation_stats(
        tm.bridge, corpus, seq_len=seq_len, batch_size=2, progress=False
    )
    assert stats.languages == ("en", "fr")
    assert stats.n_tokens.tolist() == [40, 24]
    hf = tm.hf_model()
    for k, ids in enumerate(corpus.values()):
        n = ids.numel() // seq_len * seq_len
        counts, sums = hf_count_by_hand(hf, ids[:n].reshape(-1, seq_len))
        assert torch.equal(stats.active_counts[..., k], counts)
        # The counts are exact. The float32 sums follow the CPU's kernels: on an AVX-512 CPU
        # (AMD EPYC, 2026-12-02) one of GPT-2's 128 sums differed from the HF model's by
        # 2.9e-6 (relative 1.7e-5), so the sums are held to a float32 bound of 5e-6.
        torch.testing.assert_close(stats.activation_sums[..., k], sums, rtol=1e-5, atol=5e-6)
    assert stats.metadata["gated"] is tm.gated
    assert stats.metadata["n_windows"] == {"en": 5, "fr": 3}


def test_prepend_bos_counts_only_corpus_tokens(tiny_model):
    tm = tiny_model("llama")
    corpus = token_corpus(tm.bridge, {"en": 21})
    stats = collect_activation_stats(tm.bridge, corpus, seq_len=8, prepend_bos=True, progress=False)
    assert stats.n_tokens.tolist() == [21]  # 3 windows of BOS + 7 tokens
    windows = corpus["en"].reshape(3, 7)
    bos = torch.full((3, 1), tm.bridge.tokenizer.bos_token_id)
    counts, sums = hf_count_by_hand(tm.hf_model(), torch.cat([bos, windows], 1), skip_positions=1)
    assert torch.equal(stats.active_counts[..., 0], counts)
    # The bridge recomputes each block with its own modules: on an AVX2 CPU its float32
    # pre-activations differ from the HF model's by up to 1.4e-6 (measured), so a neuron's sum
    # over the 21 counted positions may differ by up to 21 x 1.4e-6 x max|silu'| (1.1), about
    # 3.2e-5. The counts above are exact; the sums are held to that float32 bound.
    torch.testing.assert_close(stats.activation_sums[..., 0], sums, rtol=1e-5, atol=3.2e-5)


def test_text_is_packed_with_eos_between_documents(tiny_model):
    tm = tiny_model("gpt2")
    tok = tm.bridge.tokenizer
    docs = SENTENCES["fr"]
    stream: list[int] = []
    for i, doc in enumerate(docs):
        if i:
            stream.append(tok.eos_token_id)
        stream.extend(tok(doc, add_special_tokens=False)["input_ids"])
    from_text = collect_activation_stats(tm.bridge, {"fr": docs}, seq_len=16, progress=False)
    from_ids = collect_activation_stats(
        tm.bridge, {"fr": torch.tensor(stream)}, seq_len=16, progress=False
    )
    assert from_text.n_tokens.item() == len(stream) // 16 * 16
    assert torch.equal(from_text.active_counts, from_ids.active_counts)
    assert torch.equal(from_text.activation_sums, from_ids.activation_sums)


def test_text_from_a_generator_is_streamed(tiny_model):
    tm = tiny_model("qwen2")
    docs = SENTENCES["zh"]
    listed = collect_activation_stats(tm.bridge, {"zh": docs}, seq_len=8, progress=False)
    streamed = collect_activation_stats(
        tm.bridge, {"zh": (d for d in docs)}, seq_len=8, progress=False
    )
    assert torch.equal(listed.active_counts, streamed.active_counts)


def test_drop_last_false_keeps_the_remainder(tiny_model):
    tm = tiny_model("llama")
    ids = token_corpus(tm.bridge, {"en": 19})["en"]
    stats = collect_activation_stats(
        tm.bridge, {"en": ids}, seq_len=8, drop_last=False, progress=False
    )
    assert stats.n_tokens.tolist() == [19]
    hf = tm.hf_model()
    full_counts, _ = hf_count_by_hand(hf, ids[:16].reshape(2, 8))
    tail_counts, _ = hf_count_by_hand(hf, ids[16:].reshape(1, 3))
    assert torch.equal(stats.active_counts[..., 0], full_counts + tail_counts)


def test_token_budget_and_batch_size(tiny_model):
    tm = tiny_model("bloom")
    ids = token_corpus(tm.bridge, {"en": 64})["en"]
    capped = collect_activation_stats(
        tm.bridge, {"en": ids}, seq_len=8, max_tokens_per_language=30, progress=False
    )
    assert capped.n_tokens.tolist() == [24]
    truncated = collect_activation_stats(
        tm.bridge, {"en": ids[:24]}, seq_len=8, batch_size=1, progress=False
    )
    assert torch.equal(capped.active_counts, truncated.active_counts)
    torch.testing.assert_close(capped.activation_sums, truncated.activation_sums)


def test_window_enumeration_is_deterministic(tiny_model):
    tm = tiny_model("llama")
    adapter = adapt(tm.bridge)
    corpus = token_corpus(tm.bridge, {"en": 40, "fr": 17})
    settings = WindowSettings(
        seq_len=4, batch_size=3, max_tokens_per_language=None, prepend_bos=False, drop_last=False
    )
    batches = list(iter_window_batches(adapter, corpus, settings))
    again = list(iter_window_batches(adapter, corpus, settings))
    assert [b.index for b in batches] == list(range(len(batches)))
    assert [b.language for b in batches] == ["en"] * 4 + ["fr"] * 3
    assert [tuple(b.tokens.shape) for b in batches][-3:] == [(3, 4), (1, 4), (1, 1)]
    assert all(torch.equal(a.tokens, b.tokens) for a, b in zip(batches, again, strict=True))
    assert torch.equal(torch.cat([b.tokens.flatten() for b in batches[:4]]), corpus["en"])


def test_forward_stops_after_last_hook_pre_and_leaves_no_hooks(tiny_model):
    tm = tiny_model("llama")
    tokens = tm.bridge.to_tokens(["The cat sat on the mat."])
    before = tm.bridge(tokens)
    fired: list[str] = []

    def record(act, *, hook):
        fired.append(hook.name)

    collect_activation_stats(
        tm.bridge,
        token_corpus(tm.bridge, {"en": 16}),
        seq_len=8,
        batch_size=1,
        fwd_hooks=[("blocks.1.mlp.hook_post", record), ("blocks.0.mlp.hook_post", record)],
        progress=False,
    )
    assert len(fired) == 2  # layer 0's hook_post, once per window; never the last layer's
    assert all(not hp.fwd_hooks for hp in tm.bridge.hook_dict.values())
    torch.testing.assert_close(tm.bridge(tokens), before)


def test_progress_bar_can_be_shown(tiny_model, capsys):
    tm = tiny_model("llama")
    collect_activation_stats(tm.bridge, token_corpus(tm.bridge, {"en": 8}), seq_len=8)
    assert "tok" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("corpus", "kwargs", "match"),
    [
        ({}, {}, "corpus is empty"),
        ({"en": []}, {}, r"corpus\['en'\] is empty \(no documents\)"),
        ({"en": iter([])}, {}, r"corpus\['en'\] is empty \(no tokens\)"),
        ({"en": "one string"}, {}, r"corpus\['en'\] is a single string; pass a list"),
        ({"en": ["short"]}, {}, r"corpus\['en'\] has only \d+ tokens, fewer than one window"),
        ({"en": torch.tensor([1, 2, 10_000])}, {}, r"token ids in \[1, 10000\], outside"),
        ({"en": iter(["ok", 3])}, {}, r"item 1 is a int"),
        ({"en": ["text"]}, {"seq_len": 10_000}, "seq_len=10000 exceeds the context length"),
        ({"en": ["text"]}, {"batch_size": 0}, "batch_size must be a positive int; received 0"),
        ({"en": ["text"]}, {"max_tokens_per_language": -1}, "max_tokens_per_language must be"),
        ({"en": ["text"]}, {"seq_len": 0}, "seq_len must be a positive int; received 0"),
        ({"en": ["text"]}, {"checkpoint_every": 0}, "checkpoint_every must be a positive int"),
        (
            {"en": ["text"]},
            {"checkpoint_path": "no/such/folder/x.ckpt"},
            r"its folder 'no/such/folder' does not exist",
        ),
    ],
)
def test_bad_input(tiny_model, corpus, kwargs, match):
    tm = tiny_model("llama")
    kwargs = {"seq_len": 8, "progress": False, **kwargs}
    with pytest.raises(LapeError, match=match):
        collect_activation_stats(tm.bridge, corpus, **kwargs)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"batch_size": 0}, "batch_size must be a positive int; received 0"),
        ({"checkpoint_every": -1}, "checkpoint_every must be a positive int; received -1"),
        ({"residual_means": True, "checkpoint_path": "x.ckpt"}, "does not work with checkpoint"),
        ({"group": "my-group"}, r"needs an initialised torch\.distributed process group"),
    ],
)
def test_options_are_checked_before_the_model_is_touched(kwargs, match):
    class Untouchable:
        def __getattr__(self, name):
            raise AssertionError(f"the model was used ({name}) before the options were checked")

    with pytest.raises(LapeError, match=match):
        collect_activation_stats(Untouchable(), {"en": ["text"]}, **kwargs)


@pytest.mark.parametrize("name", ["prepend_bos", "drop_last", "progress", "residual_means"])
def test_flags_must_be_bools(name):
    from tl_lape.collection.engine import _check_options

    options = {
        "seq_len": None,
        "batch_size": 8,
        "max_tokens_per_language": None,
        "prepend_bos": False,
        "drop_last": True,
        "fwd_hooks": (),
        "progress": True,
        "checkpoint_path": None,
        "checkpoint_every": 1000,
        "residual_means": False,
    }
    with pytest.raises(LapeError, match=f"{name} must be True or False; received 1"):
        _check_options(**{**options, name: 1})
    for hooks in ("blocks.0.mlp.hook_pre", [("blocks.0.mlp.hook_pre", "not a function")]):
        with pytest.raises(LapeError, match=r"fwd_hooks must be a list of \(hook_name, fn\) pairs"):
            _check_options(**{**options, "fwd_hooks": hooks})
    assert _check_options(**{**options, "fwd_hooks": iter([("h", print)])}) == [("h", print)]
