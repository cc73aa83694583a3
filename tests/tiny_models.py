"""Tiny, random-initialised models built locally, for tests that need a real model.

Nothing here downloads anything: every model is built from a ``transformers`` config with random
weights (seeded), saved with ``save_pretrained`` together with a small byte-level BPE tokenizer
trained on :data:`SENTENCES`, and booted offline as a TransformerLens ``TransformerBridge``.

Example:
    >>> bridge = boot_tiny_bridge("llama", tmp_dir)          # doctest: +SKIP
    >>> bridge.cfg.n_layers, bridge.cfg.d_mlp                # doctest: +SKIP
    (2, 64)
"""

import os
from pathlib import Path
from typing import Any

import torch

#: Text in a few languages and scripts, used to train the test tokenizer and as a test corpus.
SENTENCES: dict[str, list[str]] = {
    "en": [
        "The cat sat on the warm mat and watched the rain.",
        "Language models predict the next token from the previous ones.",
        "A small river runs through the old town near the hills.",
        "She bought bread, cheese and apples at the market this morning.",
    ],
    "fr": [
        "Le chat dort sur le tapis pendant que la pluie tombe.",
        "Les modèles de langue prédisent le mot suivant dans une phrase.",
        "Une petite rivière traverse la vieille ville près des collines.",
        "Elle a acheté du pain, du fromage et des pommes au marché.",
    ],
    "zh": [
        "猫坐在温暖的垫子上看着下雨。",
        "语言模型根据前面的词预测下一个词。",
        "一条小河流过山边的古老小镇。",
        "她今天早上在市场买了面包和苹果。",
    ],
    "ru": [
        "Кошка сидит на тёплом коврике и смотрит на дождь.",
        "Языковые модели предсказывают следующее слово в тексте.",
        "Маленькая река течёт через старый город у холмов.",
        "Утром она купила на рынке хлеб, сыр и яблоки.",
    ],
}

#: The tests' small corpus: every sentence twice.
CORPUS: dict[str, list[str]] = {lang: texts * 2 for lang, texts in SENTENCES.items()}

#: Architectures :func:`build_tiny_hf_model` knows, and whether their MLP is gated.
ARCHITECTURES: dict[str, bool] = {
    "llama": True,
    "qwen2": True,
    "gemma": True,
    "gpt2": False,
    "bloom": False,
}

N_LAYERS = 2
D_MODEL = 32
D_MLP = 64
N_HEADS = 4
VOCAB_TARGET = 320
N_CTX = 128


def build_tokenizer(*, prepend_bos: bool = True) -> Any:
    """A byte-level BPE tokenizer trained on :data:`SENTENCES`, with ``<s>``, ``</s>``, ``<pad>``.

    Byte-level so that any string can be encoded. ``prepend_bos`` makes it add ``<s>`` in front of
    every encoded text (like Llama's tokenizer); GPT-2 style tokenizers do not.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_TARGET,
        special_tokens=["<pad>", "<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    texts = [s for sentences in SENTENCES.values() for s in sentences]
    tok.train_from_iterator(texts, trainer=trainer)
    if prepend_bos:
        tok.post_processor = processors.TemplateProcessing(
            single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", 1)]
        )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        model_max_length=N_CTX,
    )


def _config(arch: str, vocab_size: int) -> Any:
    import transformers

    special = {"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0}
    if arch == "llama":
        return transformers.LlamaConfig(
            vocab_size=vocab_size,
            hidden_size=D_MODEL,
            intermediate_size=D_MLP,
            num_hidden_layers=N_LAYERS,
            num_attention_heads=N_HEADS,
            num_key_value_heads=N_HEADS,
            max_position_embeddings=N_CTX,
            hidden_act="silu",
            tie_word_embeddings=False,
            **special,
        )
    if arch == "qwen2":
        return transformers.Qwen2Config(
            vocab_size=vocab_size,
            hidden_size=D_MODEL,
            intermediate_size=D_MLP,
            num_hidden_layers=N_LAYERS,
            num_attention_heads=N_HEADS,
            num_key_value_heads=2,
            max_position_embeddings=N_CTX,
            hidden_act="silu",
            tie_word_embeddings=False,
            **special,
        )
    if arch == "gemma":
        return transformers.GemmaConfig(
            vocab_size=vocab_size,
            hidden_size=D_MODEL,
            intermediate_size=D_MLP,
            num_hidden_layers=N_LAYERS,
            num_attention_heads=N_HEADS,
            num_key_value_heads=1,
            head_dim=D_MODEL // N_HEADS,
            max_position_embeddings=N_CTX,
            hidden_activation="gelu_pytorch_tanh",
            **special,
        )
    if arch == "gpt2":
        return transformers.GPT2Config(
            vocab_size=vocab_size,
            n_embd=D_MODEL,
            n_inner=D_MLP,
            n_layer=N_LAYERS,
            n_head=N_HEADS,
            n_positions=N_CTX,
            activation_function="gelu_new",
            **special,
        )
    if arch == "bloom":
        # BLOOM's MLP width is fixed at 4 * hidden_size.
        return transformers.BloomConfig(
            vocab_size=vocab_size,
            hidden_size=D_MLP // 4,
            n_layer=N_LAYERS,
            n_head=N_HEADS,
            **special,
        )
    raise ValueError(f"unknown test architecture {arch!r}; known: {sorted(ARCHITECTURES)}")


def build_tiny_hf_model(arch: str, *, seed: int = 0) -> tuple[Any, Any]:
    """A random-initialised causal LM of architecture ``arch`` and its tokenizer (eval mode)."""
    import transformers

    tokenizer = build_tokenizer(prepend_bos=arch != "gpt2")
    config = _config(arch, vocab_size=len(tokenizer))
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(config, attn_implementation="eager")
    # Random init gives tiny weights; widen them so that activations straddle zero visibly.
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() >= 2:
                p.normal_(0.0, 0.2)
    model.eval()
    return model, tokenizer


def save_tiny_model(arch: str, directory: str | os.PathLike[str], *, seed: int = 0) -> Path:
    """Build :func:`build_tiny_hf_model` and save it with its tokenizer to ``directory``."""
    directory = Path(directory)
    model, tokenizer = build_tiny_hf_model(arch, seed=seed)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def boot_tiny_bridge(arch: str, directory: str | os.PathLike[str], *, seed: int = 0) -> Any:
    """Save a tiny ``arch`` model to ``directory`` and boot it offline as a TransformerBridge."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    from transformer_lens.model_bridge import TransformerBridge

    path = save_tiny_model(arch, directory, seed=seed)
    bridge = TransformerBridge.boot_transformers(str(path), device="cpu")
    bridge.eval()
    return bridge


def load_hf_model(directory: str | os.PathLike[str]) -> Any:
    """Load the saved HF model again, independent of any bridge (eager attention, eval mode)."""
    import transformers

    model = transformers.AutoModelForCausalLM.from_pretrained(
        str(directory), attn_implementation="eager"
    )
    model.eval()
    return model


def hf_mlp_modules(model: Any) -> list[Any]:
    """The MLP module of every layer of an HF causal LM built by :func:`build_tiny_hf_model`."""
    base = model.base_model
    layers = base.h if hasattr(base, "h") else base.layers
    return [layer.mlp for layer in layers]


def hf_pre_activation_module(mlp: Any) -> Any:
    """The linear layer whose output is the pre-activation (``hook_pre``) of an HF MLP."""
    for name in ("gate_proj", "c_fc", "dense_h_to_4h", "fc1", "fc_in"):
        if hasattr(mlp, name):
            return getattr(mlp, name)
    raise ValueError(f"no known pre-activation projection in {type(mlp).__name__}")


def hf_down_projection(mlp: Any) -> Any:
    """The down projection (input width d_mlp) of an HF MLP."""
    for name in ("down_proj", "c_proj", "dense_4h_to_h", "fc2", "fc_out"):
        if hasattr(mlp, name):
            return getattr(mlp, name)
    raise ValueError(f"no known down projection in {type(mlp).__name__}")


def build_toy_model(
    *,
    n_layers: int = 1,
    d_mlp: int = 8,
    act: str = "relu",
    hook_widths: dict[str, int] | None = None,
    with_mlp_hooks: bool = True,
) -> Any:
    """A minimal TransformerLens ``HookedRootModule`` with an MLP per block, for error paths.

    ``act`` names the elementwise function between ``hook_pre`` and ``hook_post`` (``"relu"`` or
    ``"tanh"``, the latter unsupported by tl_lape); ``hook_widths`` maps a hook kind (``"pre"``,
    ``"post"``) to a wrong width to give it; ``with_mlp_hooks=False`` names the hooks otherwise.
    """
    from types import SimpleNamespace

    from transformer_lens.hook_points import HookPoint

    try:  # TransformerLens >= 3
        from transformer_lens import HookedRootModule
    except ImportError:  # pragma: no cover - TransformerLens 2.x
        from transformer_lens.hook_points import HookedRootModule

    widths = {"pre": d_mlp, "post": d_mlp, **(hook_widths or {})}
    act_fn = {"relu": torch.relu, "tanh": torch.tanh}[act]

    class ToyBlockMLP(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w_in = torch.nn.Linear(8, widths["pre"])
            # Only when the widths differ: a d_mlp x d_mlp layer would make wide toys heavy.
            if widths["pre"] != widths["post"]:
                self.w_mid = torch.nn.Linear(widths["pre"], widths["post"])
            self.w_out = torch.nn.Linear(widths["post"], 8)
            self.hook_pre = HookPoint()
            self.hook_post = HookPoint()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            pre = self.hook_pre(self.w_in(x))
            mid = act_fn(pre) if widths["pre"] == widths["post"] else self.w_mid(act_fn(pre))
            return self.w_out(self.hook_post(mid))

    class ToyBlock(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            if with_mlp_hooks:
                self.mlp = ToyBlockMLP()
            else:
                self.ffn = ToyBlockMLP()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            mlp = self.mlp if with_mlp_hooks else self.ffn
            return x + mlp(x)

    class ToyModel(HookedRootModule):
        def __init__(self) -> None:
            super().__init__()
            self.cfg = SimpleNamespace(
                n_layers=n_layers, d_mlp=d_mlp, d_vocab=16, n_ctx=32, model_name="toy"
            )
            self.embed = torch.nn.Embedding(16, 8)
            self.blocks = torch.nn.ModuleList([ToyBlock() for _ in range(n_layers)])
            self.unembed = torch.nn.Linear(8, 16)
            self.setup()

        def forward(self, tokens: torch.Tensor, return_type: str | None = "logits") -> Any:
            x = self.embed(tokens)
            for block in self.blocks:
                x = block(x)
            return self.unembed(x) if return_type == "logits" else None

    torch.manual_seed(0)
    return ToyModel().eval()


def hf_activation(mlp: Any) -> Any:
    """The activation-function module of an HF MLP (applied to the pre-activation)."""
    for name in ("act_fn", "act", "gelu_impl", "activation_fn"):
        if hasattr(mlp, name):
            return getattr(mlp, name)
    raise ValueError(f"no known activation module in {type(mlp).__name__}")


def hf_count_by_hand(
    hf_model: Any, windows: torch.Tensor, *, skip_positions: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Oracle: ``(counts, sums)``, each ``[n_layers, d_mlp]``, from plain PyTorch forward hooks.

    Runs the HF model on ``windows`` ``[batch, pos]`` and, for every layer, counts the tokens
    where the pre-activation projection's output is > 0 and sums the HF activation module's
    output on it (float64), ignoring the first ``skip_positions`` positions.
    """
    captured: list[torch.Tensor] = []
    mlps = hf_mlp_modules(hf_model)
    handles = [
        hf_pre_activation_module(mlp).register_forward_hook(
            lambda _m, _i, out: captured.append(out.detach())
        )
        for mlp in mlps
    ]
    try:
        with torch.no_grad():
            hf_model(input_ids=windows, use_cache=False)
    finally:
        for h in handles:
            h.remove()
    counts, sums = [], []
    for mlp, pre in zip(mlps, captured, strict=True):
        pre = pre[:, skip_positions:]
        counts.append((pre > 0).sum(dim=(0, 1)))
        with torch.no_grad():
            sums.append(hf_activation(mlp)(pre).to(torch.float64).sum(dim=(0, 1)))
    return torch.stack(counts), torch.stack(sums)
