"""Train tl_lape's demo model: a small Llama-style multilingual LM on the Debian handbook.

The script trains, from scratch and seeded:

1. a byte-level BPE tokenizer (``tokenizers``) on the handbook's train split in the paper's seven
   languages, each language's text repeated up to the size of the largest so that every
   language gets its share of the vocabulary;
2. a Llama-style causal LM (``transformers.LlamaForCausalLM``: RMSNorm, rotary embeddings, gated
   SiLU MLP, tied embeddings), on windows sampled uniformly per language (every batch holds the
   same number of windows of each language), with AdamW, linear warmup and cosine decay and
   gradient clipping.

It then evaluates the held-out loss per language of the saved 16-bit weights next to a unigram
baseline (the cross-entropy of the held-out tokens under the language's train-split token
frequencies) and writes the model in Hugging Face format plus ``training_log.json`` to
``tl_lape/data/demo_model/``.

Usage::

    python scripts/train_demo_model.py                    # the shipped design (32 min of training)
    python scripts/train_demo_model.py --benchmark 20     # time 20 steps of a design and exit
    python scripts/train_demo_model.py --out /tmp/m --steps 200 --n-layers 2
"""

import argparse
import json
import logging
import math
import os
import platform
import random
import shutil
import tempfile
import time
from collections import Counter
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

try:
    from tl_lape.sources.corpora import PAPER_LANGUAGES, load_debian_handbook
except ImportError:  # run from a checkout without installing the package
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from tl_lape.sources.corpora import PAPER_LANGUAGES, load_debian_handbook

logger = logging.getLogger("train_demo_model")

DEFAULT_OUT = Path(__file__).resolve().parents[1] / "tl_lape" / "data" / "demo_model"
BOS, EOS, PAD = "<s>", "</s>", "<pad>"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    p.add_argument("--languages", nargs="+", default=list(PAPER_LANGUAGES))
    p.add_argument(
        "--untranslated",
        choices=["aligned", "exact"],
        default="aligned",
        help="how load_debian_handbook drops untranslated paragraphs (the shipped model: aligned)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="CPU threads (the shipped model: 1, so that a second design could train beside it on "
        "a 2-core machine; --replay uses the logged value)",
    )
    p.add_argument("--vocab-size", type=int, default=8192)
    p.add_argument("--n-layers", type=int, default=4)
    p.add_argument("--d-model", type=int, default=256)
    p.add_argument("--d-mlp", type=int, default=768)
    p.add_argument("--n-heads", type=int, default=8)
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--windows-per-language", type=int, default=4, help="batch = this x languages")
    p.add_argument(
        "--steps",
        type=int,
        default=100_000,
        help="at most this many steps (with the default --max-minutes the time budget ends first)",
    )
    p.add_argument("--warmup", type=int, default=50)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--min-lr-ratio", type=float, default=0.1)
    p.add_argument("--weight-decay", type=float, default=0.1)
    p.add_argument("--clip", type=float, default=1.0)
    p.add_argument(
        "--dropout",
        type=float,
        default=0.0,
        help="dropout on the output of every attention and MLP block while training (the "
        "saved model has none). It curbs memorisation of the small train split, but a trial "
        "with 0.1 spread each language over more neurons: deactivating the 1%% LAPE set then "
        "changed held-out NLL by under 0.003 nats (docs/model_card.md)",
    )
    p.add_argument(
        "--monitor-every",
        type=int,
        default=100,
        help="log the loss on the first --monitor-paragraphs held-out paragraphs per language "
        "every this many steps (monitoring only: it does not select or stop anything; 0: off)",
    )
    p.add_argument("--monitor-paragraphs", type=int, default=24)
    p.add_argument(
        "--bf16",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="bfloat16 autocast (about twice as fast on CPU; weights and optimizer stay fp32)",
    )
    p.add_argument(
        "--max-minutes",
        type=float,
        default=32.0,
        help="wall-clock budget: the cosine decay follows time if that is further than steps, "
        "and training ends when either is spent (0: steps only)",
    )
    p.add_argument(
        "--replay",
        type=Path,
        default=None,
        help="a training_log.json: rerun exactly its steps and learning rates",
    )
    p.add_argument("--log-every", type=int, default=25)
    p.add_argument("--benchmark", type=int, default=0, help="time this many steps and exit")
    return p.parse_args(argv)


# ---------------------------------------------------------------------------------------------
# Tokenizer
# ---------------------------------------------------------------------------------------------


def train_tokenizer(train: dict[str, list[str]], vocab_size: int) -> PreTrainedTokenizerFast:
    """Byte-level BPE; each language repeated to about the size of the largest one."""
    sizes = {lang: sum(len(t.encode()) for t in texts) for lang, texts in train.items()}
    largest = max(sizes.values())

    def balanced() -> list[str]:
        out: list[str] = []
        for lang, texts in train.items():
            repeats = max(1, round(largest / sizes[lang]))
            out.extend(texts * repeats)
        return out

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[BOS, EOS, PAD],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(balanced(), trainer=trainer)
    bos_id = tok.token_to_id(BOS)
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, bos_id)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        add_bos_token=True,
        add_eos_token=False,
        model_max_length=1024,
    )


def encode(tokenizer: PreTrainedTokenizerFast, texts: list[str]) -> list[list[int]]:
    """Token ids of each text, without special tokens."""
    return tokenizer(texts, add_special_tokens=False)["input_ids"]


# ---------------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------------


class WindowSampler:
    """Random training windows, the same number from every language in each batch.

    Each language's paragraphs are joined into one stream, separated by ``</s> <s>``; a window
    is ``<s>`` followed by ``seq_len`` tokens from a random offset of the stream.
    """

    def __init__(self, streams: dict[str, torch.Tensor], seq_len: int, seed: int) -> None:
        self.streams = streams
        self.seq_len = seq_len
        self.generator = torch.Generator().manual_seed(seed)

    def batch(self, per_language: int, bos_id: int) -> torch.Tensor:
        rows = []
        for stream in self.streams.values():
            starts = torch.randint(
                0, len(stream) - self.seq_len, (per_language,), generator=self.generator
            )
            for s in starts.tolist():
                rows.append(torch.cat([torch.tensor([bos_id]), stream[s : s + self.seq_len]]))
        return torch.stack(rows)  # [batch, seq_len + 1]


def make_stream(ids: list[list[int]], bos_id: int, eos_id: int) -> torch.Tensor:
    flat: list[int] = []
    for i, row in enumerate(ids):
        if i:
            flat += [eos_id, bos_id]
        flat += row
    return torch.tensor(flat, dtype=torch.long)


# ---------------------------------------------------------------------------------------------
# Evaluation
# ---------------------------------------------------------------------------------------------


def unigram_cross_entropy(
    train_ids: list[list[int]], heldout_ids: list[list[int]], vocab_size: int
) -> float:
    """Mean NLL (nats) of held-out tokens under add-one smoothed train-split token frequencies."""
    counts = Counter(t for row in train_ids for t in row)
    total = sum(counts.values()) + vocab_size
    n, nll = 0, 0.0
    for row in heldout_ids:
        for t in row:
            nll -= math.log((counts.get(t, 0) + 1) / total)
            n += 1
    return nll / n


@torch.inference_mode()
def heldout_loss(
    model: LlamaForCausalLM,
    heldout_ids: list[list[int]],
    bos_id: int,
    seq_len: int,
    batch_size: int = 16,
) -> float:
    """Mean NLL (nats) of each held-out paragraph's tokens after ``<s>`` (first seq_len tokens)."""
    rows = [[bos_id, *row[:seq_len]] for row in heldout_ids if row]
    rows.sort(key=len)
    total, count = 0.0, 0
    for i in range(0, len(rows), batch_size):
        chunk = rows[i : i + batch_size]
        width = max(len(r) for r in chunk)
        ids = torch.zeros(len(chunk), width, dtype=torch.long)
        mask = torch.zeros(len(chunk), width, dtype=torch.long)
        for j, r in enumerate(chunk):
            ids[j, : len(r)] = torch.tensor(r)
            mask[j, : len(r)] = 1
        logits = model(input_ids=ids, attention_mask=mask).logits.float()
        logp = torch.log_softmax(logits[:, :-1], dim=-1)  # [batch, pos-1, vocab]
        nll = -logp.gather(-1, ids[:, 1:, None])[..., 0]  # [batch, pos-1]
        valid = mask[:, 1:].bool()
        total += nll[valid].sum().item()
        count += int(valid.sum())
    return total / count


# ---------------------------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------------------------


def build_model(args: argparse.Namespace, tokenizer: PreTrainedTokenizerFast) -> LlamaForCausalLM:
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=args.d_model,
        intermediate_size=args.d_mlp,
        num_hidden_layers=args.n_layers,
        num_attention_heads=args.n_heads,
        num_key_value_heads=args.n_heads,
        hidden_act="silu",
        max_position_embeddings=1024,
        rms_norm_eps=1e-5,
        initializer_range=0.02,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
        attention_bias=False,
        mlp_bias=False,
    )
    torch.manual_seed(args.seed)
    model = LlamaForCausalLM(config)
    model.config.use_cache = False
    return model


def add_block_dropout(model: LlamaForCausalLM, rate: float) -> list[object]:
    """Dropout on each attention and MLP block's output, active only in training mode.

    ``LlamaForCausalLM`` has no residual dropout of its own; forward hooks add it without
    changing the saved architecture. Returns the hook handles.
    """
    if rate <= 0:
        return []

    def hook(module: torch.nn.Module, _inputs: object, output: object) -> object:
        if not module.training:
            return output
        if isinstance(output, tuple):
            return (torch.nn.functional.dropout(output[0], rate, True), *output[1:])
        return torch.nn.functional.dropout(output, rate, True)

    handles = []
    for layer in model.model.layers:
        handles.append(layer.self_attn.register_forward_hook(hook))
        handles.append(layer.mlp.register_forward_hook(hook))
    return handles


def lr_at(step: int, progress: float, args: argparse.Namespace) -> float:
    """Linear warmup over ``args.warmup`` steps, then cosine decay over ``progress`` in [0, 1]."""
    if step < args.warmup:
        return args.lr * (step + 1) / args.warmup
    cosine = 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return args.lr * (args.min_lr_ratio + (1 - args.min_lr_ratio) * cosine)


def schedule_progress(step: int, elapsed: float, args: argparse.Namespace) -> float:
    """How far through training we are: by steps, or by wall-clock time if that is further.

    The wall-clock budget (``--max-minutes``) lets training finish its cosine decay on a busy
    machine; the learning rates actually used are logged, and ``--replay`` reruns them exactly.
    """
    by_steps = (step - args.warmup) / max(1, args.steps - args.warmup)
    by_time = elapsed / (args.max_minutes * 60) if args.max_minutes > 0 else 0.0
    return max(0.0, by_steps, by_time)


def make_optimizer(model: LlamaForCausalLM, args: argparse.Namespace) -> torch.optim.AdamW:
    decay = [p for n, p in model.named_parameters() if p.ndim == 2 and "embed" not in n]
    no_decay = [p for n, p in model.named_parameters() if not (p.ndim == 2 and "embed" not in n)]
    return torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": args.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ],
        lr=args.lr,
        betas=(0.9, 0.95),
        eps=1e-8,
    )


def save_atomically(
    model: LlamaForCausalLM, tokenizer: PreTrainedTokenizerFast, out: Path
) -> LlamaForCausalLM:
    """Save in bfloat16 to a temporary folder beside ``out``, then swap it in; reload it."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=out.name + ".tmp"))
    model16 = LlamaForCausalLM(model.config)
    model16.load_state_dict(model.state_dict())
    model16.bfloat16()  # in place
    model16.config.use_cache = True
    model16.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    os.chmod(tmp, 0o755)
    for path in tmp.iterdir():
        os.chmod(path, 0o644)
    old = out.with_name(out.name + ".old")
    if out.exists():
        if old.exists():
            shutil.rmtree(old)
        os.replace(out, old)
    os.replace(tmp, out)
    if old.exists():
        shutil.rmtree(old)
    reloaded = LlamaForCausalLM.from_pretrained(out, dtype=torch.float32)
    reloaded.eval()
    return reloaded


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    t_start = time.time()
    replay_log = json.loads(args.replay.read_text()) if args.replay is not None else None
    if replay_log is not None:
        # Rerun with the logged settings (only the output folder comes from the command line).
        for key, value in replay_log["args"].items():
            if key not in ("out", "replay", "benchmark", "log_every") and hasattr(args, key):
                setattr(args, key, value)
        # Logs written before --untranslated existed were trained on the "exact" corpus.
        args.untranslated = replay_log["args"].get("untranslated", "exact")
        args.dropout = replay_log["args"].get("dropout", 0.0)
    torch.set_num_threads(args.threads)
    random.seed(args.seed)
    torch.manual_seed(args.seed)

    train = load_debian_handbook(args.languages, "train", untranslated=args.untranslated)
    heldout = load_debian_handbook(args.languages, "heldout", untranslated=args.untranslated)
    tokenizer = train_tokenizer(train, args.vocab_size)
    bos_id, eos_id = tokenizer.bos_token_id, tokenizer.eos_token_id
    train_ids = {lang: encode(tokenizer, texts) for lang, texts in train.items()}
    heldout_ids = {lang: encode(tokenizer, texts) for lang, texts in heldout.items()}
    corpus_stats = {
        lang: {
            "train_paragraphs": len(train[lang]),
            "train_bytes": sum(len(t.encode()) for t in train[lang]),
            "train_tokens": sum(map(len, train_ids[lang])),
            "heldout_paragraphs": len(heldout[lang]),
            "heldout_bytes": sum(len(t.encode()) for t in heldout[lang]),
            "heldout_tokens": sum(map(len, heldout_ids[lang])),
        }
        for lang in args.languages
    }
    for lang, s in corpus_stats.items():
        logger.info("%s: %s", lang, s)
    streams = {lang: make_stream(ids, bos_id, eos_id) for lang, ids in train_ids.items()}
    sampler = WindowSampler(streams, args.seq_len, args.seed)

    model = build_model(args, tokenizer)
    n_params = sum(p.numel() for p in model.parameters())
    logger.info(
        "model: %d layers, d_model %d, d_mlp %d (%d MLP neurons), %.2fM parameters",
        args.n_layers,
        args.d_model,
        args.d_mlp,
        args.n_layers * args.d_mlp,
        n_params / 1e6,
    )
    add_block_dropout(model, args.dropout)
    optimizer = make_optimizer(model, args)
    monitor_ids = {lang: ids[: args.monitor_paragraphs] for lang, ids in heldout_ids.items()}
    monitor: list[dict[str, float]] = []

    def log_monitor(step: int) -> None:
        model.eval()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.bf16):
            row = {
                lang: heldout_loss(model, ids, bos_id, args.seq_len)
                for lang, ids in monitor_ids.items()
            }
        model.train()
        monitor.append({"step": step, **row})
        logger.info("monitor step %d: %s", step, " ".join(f"{k} {v:.3f}" for k, v in row.items()))

    replay_lrs: list[float] | None = None
    if replay_log is not None:
        replay_lrs = [x["lr"] for x in replay_log["losses"]]
        args.steps, args.max_minutes = len(replay_lrs), 0.0
    per_language = args.windows_per_language
    tokens_per_step = per_language * len(args.languages) * args.seq_len
    n_steps = args.benchmark or args.steps

    losses: list[dict[str, float]] = []
    t_train = time.time()
    stopped_early = False
    step = 0
    model.train()
    for step in range(n_steps):
        batch = sampler.batch(per_language, bos_id)
        if replay_lrs is not None:
            lr = replay_lrs[step]
        else:
            lr = lr_at(step, schedule_progress(step, time.time() - t_train, args), args)
        for group in optimizer.param_groups:
            group["lr"] = lr
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.bf16):
            logits = model(input_ids=batch[:, :-1]).logits
        loss = torch.nn.functional.cross_entropy(
            logits.float().reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1)
        )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), args.clip)
        optimizer.step()
        losses.append({"step": step, "loss": loss.item(), "lr": lr, "grad": grad_norm.item()})
        elapsed = time.time() - t_train
        progress = schedule_progress(step + 1, elapsed, args)
        last = progress >= 1.0 and not args.benchmark and replay_lrs is None
        if step % args.log_every == 0 or step == n_steps - 1 or last:
            recent = [x["loss"] for x in losses[-args.log_every :]]
            logger.info(
                "step %d/%d loss %.3f (mean of last %d: %.3f) lr %.2e  %.0f tok/s  %.1f min",
                step,
                n_steps,
                loss.item(),
                len(recent),
                sum(recent) / len(recent),
                lr,
                tokens_per_step * (step + 1) / elapsed,
                elapsed / 60,
            )
        if args.monitor_every and not args.benchmark and (step + 1) % args.monitor_every == 0:
            log_monitor(step + 1)
        if last:
            stopped_early = step + 1 < n_steps
            break
    train_seconds = time.time() - t_train
    if args.benchmark:
        logger.info(
            "benchmark: %.2f s/step, %.0f tokens/s",
            train_seconds / n_steps,
            tokens_per_step * n_steps / train_seconds,
        )
        return

    reloaded = save_atomically(model, tokenizer, args.out)
    evaluation = {}
    for lang in args.languages:
        model_loss = heldout_loss(reloaded, heldout_ids[lang], bos_id, args.seq_len)
        unigram = unigram_cross_entropy(train_ids[lang], heldout_ids[lang], len(tokenizer))
        evaluation[lang] = {"heldout_loss": model_loss, "unigram_baseline": unigram}
        logger.info("held-out %s: model %.3f nats, unigram %.3f nats", lang, model_loss, unigram)
    weight_bytes = sum(f.stat().st_size for f in args.out.iterdir())
    log = {
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "parameters": n_params,
        "mlp_neurons": args.n_layers * args.d_mlp,
        "tokens_per_step": tokens_per_step,
        "steps_done": step + 1,
        "stopped_early": stopped_early,
        "train_tokens_seen": tokens_per_step * (step + 1),
        "train_seconds": train_seconds,
        "total_seconds": time.time() - t_start,
        "corpus": corpus_stats,
        "heldout": evaluation,
        "monitor": monitor,
        "saved_bytes": weight_bytes,
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "transformers": __import__("transformers").__version__,
            "tokenizers": __import__("tokenizers").__version__,
        },
        "losses": losses,
    }
    tmp_log = args.out / "training_log.json.tmp"
    tmp_log.write_text(json.dumps(log, indent=1))
    os.replace(tmp_log, args.out / "training_log.json")
    logger.info("saved %s (%.1f MB)", args.out, weight_bytes / 1e6)


if __name__ == "__main__":
    main()
