"""Tiny random-initialised causal LMs written to ``.gguf`` files, for tests of GGUF loading.

:func:`write_gguf` is the inverse of transformers' GGUF loader (``load_gguf_checkpoint`` in
``transformers/modeling_gguf_pytorch_utils.py``, the config keys of
``transformers/integrations/ggml.py`` and the tokenizer builders of
``transformers/integrations/gguf/gguf_tokenizer_mapping.py``) for two architectures:

* ``"gemma3"`` (``Gemma3ForCausalLM``): every ``*norm.weight`` is stored as ``w + 1``, as
  llama.cpp's converter does (the loader subtracts one); a sentencepiece-style vocabulary
  (``tokenizer.ggml.model = "llama"``, byte-fallback tokens, no merges: the loader derives them);
* ``"llama"`` (``LlamaForCausalLM``): ``attn_q``/``attn_k`` rows are permuted the way
  llama.cpp's converter does (the loader permutes them back); a byte-level BPE vocabulary
  (``tokenizer.ggml.model = "gpt2"``, ``pre = "llama-bpe"``, merges listed), as Llama 3 has.

Tensors are float32 and the random weights are multiples of ``2**-20`` (so ``w + 1`` is exact),
so a file read back gives bit-identical weights. Nothing is downloaded.

Example:
    >>> model, vocab = build_tiny_model("llama")                 # doctest: +SKIP
    >>> write_gguf(model, tmp_path / "tiny.gguf", vocab=vocab)    # doctest: +SKIP
"""

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

#: The architectures :func:`build_tiny_model` and :func:`write_gguf` know: HF model_type -> GGUF.
GGUF_ARCH: dict[str, str] = {"gemma3_text": "gemma3", "llama": "llama"}

# Gemma 3 repeats (5 sliding-window layers, 1 global layer); six layers hold one of each kind.
N_LAYERS = {"gemma3": 6, "llama": 2}
D_MODEL = 64
D_MLP = 128
N_HEADS = 4
N_KV_HEADS = 2
D_HEAD = 16
N_CTX = 256
SLIDING_WINDOW = 8

# Words the tiny vocabularies hold as whole tokens (with their leading space).
_WORDS = ("the", "cat", "sat", "on", "mat", "and", "rain", "model", "language", "token", "river")

# llama.cpp token types (gguf.TokenType).
_NORMAL, _UNKNOWN, _CONTROL, _USER_DEFINED, _BYTE = 1, 2, 3, 4, 6


@dataclass(frozen=True)
class Vocab:
    """A tokenizer as GGUF metadata stores it (``tokenizer.ggml.*``)."""

    model: str
    tokens: list[str]
    token_types: list[int]
    scores: list[float]
    bos_id: int
    eos_id: int
    unk_id: int | None
    pad_id: int
    merges: list[str] | None = None
    pre: str | None = None

    def __len__(self) -> int:
        return len(self.tokens)


def sentencepiece_vocab() -> Vocab:
    """A Gemma-style vocabulary: specials, 256 byte-fallback tokens, characters and words.

    Every multi-character piece splits into two other pieces, so the merges transformers
    derives from the token order (no merges are stored, as in Gemma files) rebuild each word.
    """
    specials = ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>"]
    types = [_CONTROL, _CONTROL, _CONTROL, _UNKNOWN, _USER_DEFINED]
    tokens = list(specials)
    tokens += [f"<0x{b:02X}>" for b in range(256)]
    types += [_BYTE] * 256
    pieces = ["▁", *sorted({c for w in _WORDS for c in w})]
    for word in _WORDS:
        spelled = "▁" + word
        pieces += [spelled[:i] for i in range(2, len(spelled) + 1) if spelled[:i] not in pieces]
    tokens += pieces
    types += [_NORMAL] * len(pieces)
    scores = [0.0] * len(specials) + [0.0] * 256 + [-float(i) for i in range(len(pieces))]
    return Vocab("llama", tokens, types, scores, bos_id=2, eos_id=1, unk_id=3, pad_id=0)


def byte_level_vocab() -> Vocab:
    """A Llama-3-style byte-level BPE vocabulary: 256 byte tokens, word merges, three specials."""
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    spell = bytes_to_unicode()
    tokens = [spell[b] for b in range(256)]
    merges: list[str] = []
    for word in _WORDS:
        spelled = spell[ord(" ")] + word
        for i in range(2, len(spelled) + 1):
            if spelled[:i] not in tokens:
                merges.append(f"{spelled[: i - 1]} {spelled[i - 1]}")
                tokens.append(spelled[:i])
    n_plain = len(tokens)
    # The EOS is GPT-2's "<|endoftext|>": transformers' byte-level GGUF tokenizer adds that token
    # (as its default unk) when the vocabulary lacks it, one id past the model's embedding.
    tokens += ["<|begin_of_text|>", "<|endoftext|>", "<|pad|>"]
    types = [_NORMAL] * n_plain + [_CONTROL] * 3
    return Vocab(
        "gpt2",
        tokens,
        types,
        scores=[0.0] * len(tokens),
        bos_id=n_plain,
        eos_id=n_plain + 1,
        unk_id=None,
        pad_id=n_plain + 2,
        merges=merges,
        pre="llama-bpe",
    )


def tiny_vocab(arch: str) -> Vocab:
    """The vocabulary :func:`build_tiny_model` gives architecture ``arch`` (a GGUF arch name)."""
    if arch == "gemma3":
        return sentencepiece_vocab()
    if arch == "llama":
        return byte_level_vocab()
    raise ValueError(f"unknown GGUF test architecture {arch!r}; known: {sorted(N_LAYERS)}")


def tiny_config(arch: str, vocab: Vocab) -> Any:
    """A tiny ``transformers`` config of GGUF architecture ``arch`` over ``vocab``.

    Settings a GGUF file does not carry (Gemma's ``query_pre_attn_scalar``, layer pattern and
    sliding-window rope base, the activations) keep their defaults, which the loader also uses.
    """
    import transformers

    common: dict[str, Any] = {
        "vocab_size": len(vocab),
        "hidden_size": D_MODEL,
        "intermediate_size": D_MLP,
        "num_hidden_layers": N_LAYERS[arch],
        "num_attention_heads": N_HEADS,
        "num_key_value_heads": N_KV_HEADS,
        "head_dim": D_HEAD,
        "max_position_embeddings": N_CTX,
        # GGUF stores the eps as float32; one that float32 holds exactly reads back equal.
        "rms_norm_eps": float(np.float32(1e-5)),
        "bos_token_id": vocab.bos_id,
        "eos_token_id": vocab.eos_id,
        "pad_token_id": vocab.pad_id,
    }
    if arch == "gemma3":
        rope = {
            "sliding_attention": {"rope_type": "default", "rope_theta": 10_000.0},
            "full_attention": {"rope_type": "default", "rope_theta": 50_000.0},
        }
        return transformers.Gemma3TextConfig(
            **common, sliding_window=SLIDING_WINDOW, rope_parameters=rope, tie_word_embeddings=True
        )
    if arch == "llama":
        return transformers.LlamaConfig(
            **common,
            rope_parameters={"rope_type": "default", "rope_theta": 50_000.0},
            tie_word_embeddings=False,
        )
    raise ValueError(f"unknown GGUF test architecture {arch!r}; known: {sorted(N_LAYERS)}")


def build_tiny_model(arch: str, *, seed: int = 0) -> tuple[Any, Vocab]:
    """A seeded random causal LM of GGUF architecture ``arch`` (eval mode) and its vocabulary.

    Every parameter, norms included, is redrawn so that no weight sits at its initial value:
    a norm stored or read back with the wrong offset, or two tensors swapped, changes the logits.
    """
    import transformers

    vocab = tiny_vocab(arch)
    config = tiny_config(arch, vocab)
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(
        config, attn_implementation="eager", dtype=torch.float32
    )
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, param in sorted(model.named_parameters()):
            std = 0.2 if param.dim() >= 2 else 0.1
            # Multiples of 2**-20: exact in float32 even after the Gemma norms' ``w + 1``.
            fresh = torch.round(torch.randn(param.shape, generator=generator) * std * 2**20) / 2**20
            param.copy_(fresh if param.dim() >= 2 or arch == "gemma3" else fresh + 1.0)
    model.eval()
    return model, vocab


def _llama_permute(weights: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's ``LlamaModel.permute`` (rotary halves -> interleaved pairs), per head."""
    rows = weights.shape[0]
    return (
        weights.reshape(n_head, 2, rows // n_head // 2, *weights.shape[1:])
        .swapaxes(1, 2)
        .reshape(weights.shape)
    )


def gguf_tensors(hf_model: Any) -> dict[str, np.ndarray]:
    """The GGUF tensors (name -> float32 array, numpy order) llama.cpp would write for the model."""
    import gguf

    config = hf_model.config
    arch = GGUF_ARCH.get(config.model_type)
    if arch is None:
        raise ValueError(f"write_gguf knows {sorted(GGUF_ARCH)}, not {config.model_type!r}")
    arch_id = next(k for k, v in gguf.MODEL_ARCH_NAMES.items() if v == arch)
    names = gguf.get_tensor_name_map(arch_id, config.num_hidden_layers)
    tensors: dict[str, np.ndarray] = {}
    # named_parameters() lists a tied lm_head once, as the embedding: llama.cpp omits output.weight.
    for hf_name, param in hf_model.named_parameters():
        base, suffix = hf_name.rsplit(".", 1)
        gguf_base = names.get_name(base)
        if gguf_base is None:
            raise ValueError(f"no GGUF name for {hf_name!r} ({arch})")
        name = f"{gguf_base}.{suffix}"
        data = param.detach().to(device="cpu", dtype=torch.float32).numpy().copy()
        if arch == "llama" and name.endswith(".attn_q.weight"):
            data = _llama_permute(data, config.num_attention_heads)
        elif arch == "llama" and name.endswith(".attn_k.weight"):
            data = _llama_permute(data, config.num_key_value_heads)
        elif arch == "gemma3" and name.endswith("norm.weight"):
            data = data + np.float32(1.0)
        tensors[name] = np.ascontiguousarray(data, dtype=np.float32)
    return tensors


def write_gguf(hf_model: Any, path: str | Path, *, vocab: Vocab, name: str = "tiny") -> Path:
    """Write ``hf_model`` (Gemma 3 or Llama) and ``vocab`` to the GGUF file ``path`` (float32).

    The metadata holds what transformers maps back into the config (context length, widths,
    block count, head counts and width, rope base, RMS eps, sliding window, vocabulary size)
    and into the tokenizer (tokens, types, scores, merges, special ids, add-BOS flag).
    """
    import gguf

    config = hf_model.config
    arch = GGUF_ARCH.get(config.model_type)
    if arch is None:
        raise ValueError(f"write_gguf knows {sorted(GGUF_ARCH)}, not {config.model_type!r}")
    if len(vocab) != config.vocab_size:
        raise ValueError(f"vocab has {len(vocab)} tokens, the model {config.vocab_size}")
    tensors = gguf_tensors(hf_model)
    path = Path(path)
    writer = gguf.GGUFWriter(str(path), arch)
    try:
        writer.add_name(f"{name}-{arch}")
        writer.add_file_type(gguf.LlamaFileType.ALL_F32)
        writer.add_context_length(config.max_position_embeddings)
        writer.add_embedding_length(config.hidden_size)
        writer.add_block_count(config.num_hidden_layers)
        writer.add_feed_forward_length(config.intermediate_size)
        writer.add_head_count(config.num_attention_heads)
        writer.add_head_count_kv(config.num_key_value_heads)
        writer.add_layer_norm_rms_eps(config.rms_norm_eps)
        writer.add_vocab_size(config.vocab_size)
        if arch == "gemma3":
            writer.add_rope_freq_base(config.rope_parameters["full_attention"]["rope_theta"])
            writer.add_key_length(config.head_dim)
            writer.add_value_length(config.head_dim)
            writer.add_sliding_window(config.sliding_window)
        else:
            writer.add_rope_freq_base(config.rope_parameters["rope_theta"])
            writer.add_rope_dimension_count(config.head_dim)
        writer.add_tokenizer_model(vocab.model)
        if vocab.pre is not None:
            writer.add_tokenizer_pre(vocab.pre)
        writer.add_token_list(vocab.tokens)
        writer.add_token_scores(vocab.scores)
        writer.add_token_types(vocab.token_types)
        if vocab.merges is not None:
            writer.add_token_merges(vocab.merges)
        writer.add_bos_token_id(vocab.bos_id)
        writer.add_eos_token_id(vocab.eos_id)
        if vocab.unk_id is not None:
            writer.add_unk_token_id(vocab.unk_id)
        writer.add_pad_token_id(vocab.pad_id)
        writer.add_add_bos_token(True)
        writer.add_add_eos_token(False)
        for tensor_name, data in tensors.items():
            writer.add_tensor(tensor_name, data)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
    finally:
        writer.close()
    return path
