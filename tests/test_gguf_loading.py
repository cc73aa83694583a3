"""GGUF loading: tiny Gemma 3 and Llama models written by ``_gguf.write_gguf`` and read back.

First transformers' own loader (weights, config, tokenizer, logits), then
``tl_lape.sources.models.load_model`` (bridge logits, the dequantised-weights cache, bad input).
Nothing here touches the network: a fixture refuses every socket connection.
"""

import functools
import importlib
import shutil
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from _gguf import D_MLP, N_LAYERS, Vocab, build_tiny_model, write_gguf

from tl_lape.errors import LapeError
from tl_lape.sources.models import load_hf_gguf, load_model

ARCHS = sorted(N_LAYERS)
TEXT = "the cat sat on the mat, in the rain! Le chat dort. 猫が寝る。"


@dataclass
class TinyGguf:
    """A tiny original HF model, the GGUF file written from it, and its reference logits."""

    arch: str
    model: Any
    vocab: Vocab
    path: Path
    tokens: torch.Tensor
    logits: torch.Tensor


@pytest.fixture(autouse=True)
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Refuse every internet connection, so that a test that would download fails instead."""

    def refuse(sock: socket.socket, address: Any) -> None:
        if sock.family != socket.AF_UNIX:
            raise OSError(f"network access in a test (to {address!r})")
        return real_connect(sock, address)

    real_connect = socket.socket.connect
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(scope="module", params=ARCHS)
def tiny(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> TinyGguf:
    """A seeded tiny model of each architecture, written to ``<tmp>/tiny-<arch>.gguf``."""
    arch = request.param
    model, vocab = build_tiny_model(arch, seed=0)
    path = write_gguf(
        model, tmp_path_factory.mktemp(f"gguf-{arch}") / f"tiny-{arch}.gguf", vocab=vocab
    )
    generator = torch.Generator().manual_seed(1)
    # Longer than the sliding window, so that Gemma's local layers differ from global ones.
    tokens = torch.randint(0, len(vocab), (2, 20), generator=generator)
    with torch.no_grad():
        logits = model(input_ids=tokens).logits
    return TinyGguf(arch, model, vocab, path, tokens, logits)


class GgufReadSpy:
    """Records every call to transformers' GGUF readers, calling through to the real ones."""

    TARGETS = (
        ("transformers.modeling_gguf_pytorch_utils", "load_gguf_checkpoint"),
        ("transformers.integrations.gguf.reader", "_read_metadata"),
    )

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls: list[str] = []
        for module_name, name in self.TARGETS:
            module = importlib.import_module(module_name)
            monkeypatch.setattr(module, name, self._wrap(getattr(module, name), name))

    def _wrap(self, real: Any, name: str) -> Any:
        @functools.wraps(real)
        def spy(*args: Any, **kwargs: Any) -> Any:
            self.calls.append(name)
            return real(*args, **kwargs)

        return spy


def _hf_from_gguf(path: Path) -> Any:
    import transformers

    model = transformers.AutoModelForCausalLM.from_pretrained(
        str(path.parent), gguf_file=path.name, dtype=torch.float32, attn_implementation="eager"
    )
    return model.eval()


def _cache_entries(cache: Path) -> list[Path]:
    """The folders under ``cache`` holding a cached ``model.safetensors``."""
    return sorted(p.parent for p in cache.rglob("model.safetensors"))


def _bridge_logits(bridge: Any, tokens: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return bridge(tokens).float()


def _assert_cache_empty(cache: Path) -> None:
    left = sorted(cache.rglob("*")) if cache.exists() else []
    assert left == [], f"the failed load left {left} in the cache"


# ----------------------------------------------------------------------------- transformers


def test_transformers_reads_back_same_weights_and_logits(tiny: TinyGguf) -> None:
    hf = _hf_from_gguf(tiny.path)
    assert type(hf).__name__ == type(tiny.model).__name__
    original, loaded = tiny.model.state_dict(), hf.state_dict()
    assert set(loaded) == set(original)
    for name, tensor in original.items():
        torch.testing.assert_close(loaded[name], tensor, rtol=0, atol=0, msg=name)
    with torch.no_grad():
        logits = hf(input_ids=tiny.tokens).logits
    torch.testing.assert_close(logits, tiny.logits, rtol=1e-6, atol=1e-6)


def test_transformers_reads_back_config(tiny: TinyGguf) -> None:
    cfg, original = _hf_from_gguf(tiny.path).config, tiny.model.config
    keys = [
        "model_type",
        "vocab_size",
        "hidden_size",
        "intermediate_size",
        "num_hidden_layers",
        "num_attention_heads",
        "num_key_value_heads",
        "head_dim",
        "max_position_embeddings",
        "rms_norm_eps",
        "rope_parameters",
        "tie_word_embeddings",
        "bos_token_id",
        "eos_token_id",
        "pad_token_id",
    ]
    if tiny.arch == "gemma3":
        keys += ["sliding_window", "layer_types", "query_pre_attn_scalar"]
        assert set(cfg.layer_types) == {"sliding_attention", "full_attention"}
    for key in keys:
        assert getattr(cfg, key) == getattr(original, key), key
    assert cfg.tie_word_embeddings is (tiny.arch == "gemma3")


def test_transformers_reads_back_tokenizer(tiny: TinyGguf) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tiny.path.parent), gguf_file=tiny.path.name)
    vocab = tiny.vocab
    assert len(tok) == len(vocab) == tiny.model.config.vocab_size
    assert (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id) == (
        vocab.bos_id,
        vocab.eos_id,
        vocab.pad_id,
    )
    ids = tok(TEXT).input_ids
    assert ids[0] == vocab.bos_id
    assert all(0 <= i < len(vocab) for i in ids)
    assert tok.decode(ids, skip_special_tokens=True) == TEXT
    # Whole words of the vocabulary come out as one token each.
    space = "▁" if vocab.model == "llama" else "Ġ"
    assert vocab.tokens.index(space + "cat") in tok(" cat").input_ids


# ----------------------------------------------------------------------------- tl_lape


def test_load_model_bridge_matches_hf(tiny: TinyGguf, tmp_path: Path) -> None:
    bridge = load_model(str(tiny.path), device="cpu", cache_dir=tmp_path / "cache")
    assert bridge.cfg.n_layers == N_LAYERS[tiny.arch]
    assert bridge.cfg.d_mlp == D_MLP
    torch.testing.assert_close(
        _bridge_logits(bridge, tiny.tokens), tiny.logits, rtol=1e-4, atol=1e-4
    )


def test_second_load_reads_cache(
    tiny: TinyGguf, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from transformers import AutoTokenizer

    cache = tmp_path / "cache"
    spy = GgufReadSpy(monkeypatch)
    load_model(str(tiny.path), device="cpu", cache_dir=cache)
    assert spy.calls, "the first load did not read the GGUF file"
    [entry] = _cache_entries(cache)
    assert (entry / "config.json").is_file()

    spy.calls.clear()
    bridge = load_model(str(tiny.path), device="cpu", cache_dir=cache)
    assert spy.calls == [], "the second load read the GGUF file instead of the cache"
    assert _cache_entries(cache) == [entry]
    torch.testing.assert_close(
        _bridge_logits(bridge, tiny.tokens), tiny.logits, rtol=1e-4, atol=1e-4
    )
    gguf_tok = AutoTokenizer.from_pretrained(str(tiny.path.parent), gguf_file=tiny.path.name)
    assert bridge.tokenizer(TEXT).input_ids == gguf_tok(TEXT).input_ids


def test_corrupted_cache_is_rebuilt(
    tiny: TinyGguf, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = tmp_path / "cache"
    load_model(str(tiny.path), device="cpu", cache_dir=cache)
    [entry] = _cache_entries(cache)
    weights = entry / "model.safetensors"
    # Flip bytes in the tensor data, past the header: the file still parses, only wrong.
    damaged = bytearray(weights.read_bytes())
    start = len(damaged) - 512
    damaged[start : start + 64] = bytes(b ^ 0xFF for b in damaged[start : start + 64])
    weights.write_bytes(bytes(damaged))

    spy = GgufReadSpy(monkeypatch)
    bridge = load_model(str(tiny.path), device="cpu", cache_dir=cache)
    assert spy.calls, "the damaged cache was used instead of being rebuilt from the GGUF file"
    torch.testing.assert_close(
        _bridge_logits(bridge, tiny.tokens), tiny.logits, rtol=1e-4, atol=1e-4
    )
    assert _cache_entries(cache) == [entry]
    assert weights.read_bytes() != bytes(damaged)

    spy.calls.clear()
    hf, _ = load_hf_gguf(tiny.path, cache_dir=cache)
    assert spy.calls == [], "the rebuilt cache entry was not used"
    with torch.no_grad():
        logits = hf(input_ids=tiny.tokens).logits
    torch.testing.assert_close(logits, tiny.logits, rtol=1e-5, atol=1e-5)


def test_load_hf_gguf_matches_original(tiny: TinyGguf, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    for _ in range(2):  # the first call fills the cache, the second reads it
        hf, tok = load_hf_gguf(tiny.path, cache_dir=cache)
        with torch.no_grad():
            logits = hf(input_ids=tiny.tokens).logits
        torch.testing.assert_close(logits, tiny.logits, rtol=1e-5, atol=1e-5)
        assert len(tok) == len(tiny.vocab)


# ----------------------------------------------------------------------------- bad input


@pytest.fixture(scope="module")
def gguf_bytes(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """The bytes of a valid tiny Llama GGUF file."""
    model, vocab = build_tiny_model("llama", seed=0)
    return write_gguf(
        model, tmp_path_factory.mktemp("good") / "good.gguf", vocab=vocab
    ).read_bytes()


LOADERS = {
    "load_model": lambda path, cache: load_model(str(path), device="cpu", cache_dir=cache),
    "load_hf_gguf": lambda path, cache: load_hf_gguf(path, cache_dir=cache),
}


@pytest.mark.parametrize("loader", sorted(LOADERS))
@pytest.mark.parametrize("where", ["in_metadata", "in_tensors"])
def test_truncated_gguf_raises(gguf_bytes: bytes, tmp_path: Path, loader: str, where: str) -> None:
    # The metadata (mostly the vocabulary) fills the first few KB of this file; real files
    # cut short while downloading usually end in the tensor data, half way is that case.
    cut = 1000 if where == "in_metadata" else len(gguf_bytes) // 2
    path = tmp_path / "cut.gguf"
    path.write_bytes(gguf_bytes[:cut])
    cache = tmp_path / "cache"
    with pytest.raises(LapeError) as error:
        LOADERS[loader](path, cache)
    assert str(path) in str(error.value)
    _assert_cache_empty(cache)


@pytest.mark.parametrize("loader", sorted(LOADERS))
def test_not_gguf_raises(tmp_path: Path, loader: str) -> None:
    path = tmp_path / "x.gguf"
    path.write_bytes(np.random.default_rng(0).bytes(4096))
    assert path.read_bytes()[:4] != b"GGUF"
    cache = tmp_path / "cache"
    with pytest.raises(LapeError) as error:
        LOADERS[loader](path, cache)
    assert str(path) in str(error.value)
    _assert_cache_empty(cache)


def test_not_gguf_next_to_hf_folder_raises(tmp_path: Path) -> None:
    """A damaged ``.gguf`` is an error even where its folder also holds a Hugging Face model."""
    from tiny_models import save_tiny_model

    folder = save_tiny_model("llama", tmp_path / "hf")
    path = folder / "x.gguf"
    path.write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(LapeError) as error:
        load_model(str(path), device="cpu", cache_dir=tmp_path / "cache")
    assert str(path) in str(error.value)


def test_missing_gguf_raises(tmp_path: Path) -> None:
    path = tmp_path / "absent.gguf"
    with pytest.raises(LapeError) as error:
        load_model(str(path), device="cpu", cache_dir=tmp_path / "cache")
    assert str(path) in str(error.value)
    _assert_cache_empty(tmp_path / "cache")


def test_unknown_model_name_raises(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # so that no folder of that name can exist
    with pytest.raises(LapeError, match="no-such-model-xyz"):
        load_model("no-such-model-xyz", device="cpu", cache_dir=tmp_path / "cache")
    _assert_cache_empty(tmp_path / "cache")


def test_gguf_copy_shares_cache_entry(tiny: TinyGguf, tmp_path: Path) -> None:
    """The cache is keyed by content: a renamed copy of the file reuses the same entry."""
    cache = tmp_path / "cache"
    load_hf_gguf(tiny.path, cache_dir=cache)
    copy = tmp_path / "renamed.gguf"
    shutil.copyfile(tiny.path, copy)
    load_hf_gguf(copy, cache_dir=cache)
    assert len(_cache_entries(cache)) == 1
