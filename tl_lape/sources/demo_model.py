"""The demo model shipped with tl_lape: a small multilingual Llama-style LM.

The model was trained by ``scripts/train_demo_model.py`` from scratch on the train split of the
Debian Administrator's Handbook (see :func:`tl_lape.sources.corpora.load_debian_handbook`) in the
paper's seven languages (en, zh, fr, es, vi, id, ja). It is a ``LlamaForCausalLM`` (RMSNorm,
rotary embeddings, gated SiLU MLP) with a byte-level BPE tokenizer that prepends ``<s>``, saved
in 16-bit Hugging Face format under ``tl_lape/data/demo_model/``; ``docs/model_card.md``
describes its data, training and held-out losses.

Example:
    >>> from tl_lape import load_demo_model
    >>> model = load_demo_model()  # doctest: +SKIP
    >>> model.cfg.n_layers, model.cfg.d_mlp  # doctest: +SKIP
    (4, 768)
"""

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from tl_lape.errors import LapeError
from tl_lape.formats import parse_json

__all__ = ["demo_model_path", "demo_training_log", "hub_offline", "load_demo_model"]

_REQUIRED_FILES = ("config.json", "model.safetensors", "tokenizer.json")


def demo_model_path() -> Path:
    """Return the folder holding the demo model (Hugging Face format).

    Example:
        >>> (demo_model_path() / "config.json").name
        'config.json'
    """
    return Path(__file__).resolve().parent.parent / "data" / "demo_model"


def _checked_path() -> Path:
    path = demo_model_path()
    missing = [name for name in _REQUIRED_FILES if not (path / name).is_file()]
    if missing:
        raise LapeError(
            f"The demo model in {str(path)!r} is missing {missing}. Reinstall tl_lape, or "
            "train it again with `python scripts/train_demo_model.py` from a source checkout."
        )
    return path


def demo_training_log() -> dict[str, Any]:
    """Return the demo model's training log (settings, losses, held-out losses per language).

    Example:
        >>> sorted(demo_training_log()["heldout"])  # doctest: +SKIP
        ['en', 'es', 'fr', 'id', 'ja', 'vi', 'zh']
    """
    log_path = _checked_path() / "training_log.json"
    if not log_path.is_file():
        raise LapeError(f"The demo model has no training log at {str(log_path)!r}.")
    log = parse_json(
        log_path.read_bytes(),
        where=f"the demo model's training log {str(log_path)!r}",
        advice="reinstall tl_lape",
    )
    if not isinstance(log, dict):
        raise LapeError(
            f"the demo model's training log {str(log_path)!r} is not a JSON object; reinstall "
            "tl_lape"
        )
    return log


@contextlib.contextmanager
def hub_offline() -> Iterator[None]:
    """Make Hugging Face libraries stay off the network for the duration of the block.

    Example:
        >>> with hub_offline():
        ...     os.environ["HF_HUB_OFFLINE"]
        '1'
    """
    saved = {key: os.environ.get(key) for key in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    os.environ.update({key: "1" for key in saved})
    hub_constants: Any = None
    hub_saved: Any = None
    try:
        import huggingface_hub.constants as hub_constants

        hub_saved = hub_constants.HF_HUB_OFFLINE
        hub_constants.HF_HUB_OFFLINE = True
    except (ImportError, AttributeError):
        hub_constants = None
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        if hub_constants is not None:
            hub_constants.HF_HUB_OFFLINE = hub_saved


def load_demo_model(device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32) -> Any:
    """Load the demo model as a TransformerLens ``TransformerBridge``, without any network access.

    Args:
        device: where to put the model.
        dtype: the dtype to compute in (the weights are stored in bfloat16).

    Returns:
        A ``transformer_lens.model_bridge.TransformerBridge`` whose tokenizer prepends ``<s>``.

    Raises:
        LapeError: if the model files are missing.

    Example:
        >>> model = load_demo_model()  # doctest: +SKIP
        >>> bos = model.tokenizer.bos_token_id  # doctest: +SKIP
        >>> model.to_tokens("Bonjour")[0, 0].item() == bos  # doctest: +SKIP
        True
    """
    path = _checked_path()
    from transformer_lens.model_bridge import TransformerBridge

    with hub_offline():
        model = TransformerBridge.boot_transformers(str(path), device=device, dtype=dtype)
    model.eval()
    return model
