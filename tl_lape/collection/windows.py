"""Windows: how text becomes the fixed-length token windows that collection and evaluation run.

Both steps tokenize each document without special tokens, join the documents into one token
stream with a separator between consecutive documents, and cut the stream into windows of
``seq_len`` tokens, optionally each starting with BOS. They differ on purpose, and the
difference is one explicit :class:`WindowPolicy`:

- :data:`COLLECTION` (the LAPE paper's recipe, used by :func:`tl_lape.collect_activation_stats`):
  ``EOS`` between documents, raw windows without BOS (``prepend_bos=True`` adds a BOS position
  that is run but not counted). See :class:`WindowSettings` and :func:`iter_window_batches`.
- :func:`evaluation_policy` (used by :func:`token_windows` for perplexity and steering
  references): ``EOS BOS`` between documents and BOS at the start of every window, the format
  the demo model was trained on; without BOS, just ``EOS``.

Special tokens the tokenizer lacks are left out of the separator. A document longer than
:data:`DOCUMENT_PIECE_CHARS` characters is tokenized piece by piece, lazily (each piece cut just
before a space or newline when there is one in its second half), so that the work and memory of
a token budget are bounded by the budget, not by the longest line: a 50 MB one-line file with a
budget of 512 tokens tokenizes one piece. A cut can merge or split the one token that spans it,
once per piece.

Example:
    >>> COLLECTION
    WindowPolicy(separator=('eos',), prepend_bos=False)
    >>> evaluation_policy(True)
    WindowPolicy(separator=('eos', 'bos'), prepend_bos=True)
"""

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import torch
from jaxtyping import Int
from torch import Tensor

from tl_lape._adapter import ModelAdapter, adapt
from tl_lape.errors import LapeError

__all__ = [
    "COLLECTION",
    "DOCUMENT_PIECE_CHARS",
    "MAX_SEQ_LEN",
    "WindowBatch",
    "WindowPolicy",
    "WindowSettings",
    "check_seq_len",
    "document_stream",
    "evaluation_policy",
    "iter_window_batches",
    "token_windows",
]

SpecialToken = Literal["eos", "bos"]

#: Characters of a long document tokenized at a time (see the module docstring).
DOCUMENT_PIECE_CHARS = 1 << 16


@dataclass(frozen=True)
class WindowPolicy:
    """Which special tokens separate documents, and whether windows start with BOS.

    Attributes:
        separator: Special tokens between consecutive documents, in order (those the
            tokenizer lacks are left out).
        prepend_bos: Start every window with the BOS token.
    """

    # str, not SpecialToken, so that a bad token meets the LapeError below, not a type checker.
    separator: tuple[str, ...] = ("eos",)
    prepend_bos: bool = False

    def __post_init__(self) -> None:
        for token in self.separator:
            if token not in ("eos", "bos"):
                raise LapeError(
                    f"separator tokens must be 'eos' or 'bos'; received {token!r} in "
                    f"{self.separator!r}"
                )

    def separator_ids(self, adapter: ModelAdapter) -> list[int]:
        """The separator's token ids for this model's tokenizer."""
        ids = {"eos": adapter.eos_token_id, "bos": adapter.bos_token_id}
        return [i for i in (ids[token] for token in self.separator) if i is not None]


#: Collection (the paper's recipe): EOS between documents, no BOS.
COLLECTION = WindowPolicy(separator=("eos",), prepend_bos=False)


def evaluation_policy(prepend_bos: bool = True) -> WindowPolicy:
    """Evaluation's policy: ``EOS BOS`` between documents and BOS first (just EOS without BOS)."""
    separator: tuple[SpecialToken, ...] = ("eos", "bos") if prepend_bos else ("eos",)
    return WindowPolicy(separator=separator, prepend_bos=prepend_bos)


#: The longest window tl_lape cuts (2**20 tokens), whatever the model: a stated bound checked
#: before anything is loaded or allocated. The model's own context length, often shorter, is
#: checked once the model is there.
MAX_SEQ_LEN = 1 << 20


def check_seq_len(value: Any, name: str = "seq_len") -> None:
    """Raise :class:`LapeError` unless ``value`` is an int in ``1 .. MAX_SEQ_LEN``.

    Args:
        value: The window length asked for.
        name: How the message names it (``"--seq-len"`` on the command line).
    """
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise LapeError(f"{name} must be a positive int; received {value!r}")
    if value > MAX_SEQ_LEN:
        raise LapeError(
            f"{name} must be at most {MAX_SEQ_LEN:,} tokens (tl_lape's bound on a window; the "
            f"model's context length, checked once it loads, is usually far shorter); received "
            f"{value:,}; pass a shorter one, e.g. 512"
        )


@dataclass(frozen=True)
class WindowSettings:
    """How a corpus is cut into windows; see the module docstring.

    Attributes:
        seq_len: Positions per window (including the BOS position if ``prepend_bos``).
        batch_size: Windows per forward pass.
        max_tokens_per_language: Counted tokens per language at most (None: all).
        prepend_bos: Start every window with BOS (not counted).
        drop_last: Drop a final window shorter than ``seq_len``.
    """

    seq_len: int
    batch_size: int
    max_tokens_per_language: int | None
    prepend_bos: bool
    drop_last: bool

    def __post_init__(self) -> None:
        check_seq_len(self.seq_len)
        value = self.batch_size
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise LapeError(f"batch_size must be a positive int; received {value!r}")
        if self.prepend_bos and self.seq_len < 2:
            raise LapeError(
                f"seq_len must be >= 2 with prepend_bos=True (BOS plus at least one token); "
                f"received {self.seq_len}"
            )
        budget = self.max_tokens_per_language
        if budget is not None and (
            isinstance(budget, bool) or not isinstance(budget, int) or budget < 1
        ):
            raise LapeError(
                f"max_tokens_per_language must be a positive int or None; received {budget!r}"
            )

    @property
    def policy(self) -> "WindowPolicy":
        """The BOS/separator policy of collection: EOS between documents, BOS if asked."""
        return WindowPolicy(separator=("eos",), prepend_bos=self.prepend_bos)

    @property
    def content_len(self) -> int:
        """Corpus tokens per full window (``seq_len`` minus the BOS position, if any)."""
        return self.seq_len - 1 if self.prepend_bos else self.seq_len

    def to_dict(self) -> dict[str, Any]:
        """The settings as a JSON-serialisable dict."""
        return {
            "seq_len": self.seq_len,
            "batch_size": self.batch_size,
            "max_tokens_per_language": self.max_tokens_per_language,
            "prepend_bos": self.prepend_bos,
            "drop_last": self.drop_last,
        }


@dataclass(frozen=True)
class WindowBatch:
    """One forward pass worth of windows of one language.

    Attributes:
        index: Position of this batch in the deterministic enumeration (0, 1, 2, ...).
        language: Language code.
        lang_index: Index of the language in the corpus' order.
        tokens: ``[batch, pos]`` token ids on the CPU (with the BOS column if ``prepend_bos``).
        n_counted: Tokens that count towards the statistics (``batch * (pos - bos)``).
    """

    index: int
    language: str
    lang_index: int
    tokens: Tensor
    n_counted: int


def _check_token_tensor(ids: Tensor, language: str, d_vocab: int | None) -> Tensor:
    if ids.ndim != 1 or ids.dtype in (torch.bool,) or ids.is_floating_point() or ids.is_complex():
        raise LapeError(
            f"corpus[{language!r}] must be an iterable of strings or a 1-D integer tensor of token "
            f"ids; received a {ids.dtype} tensor of shape {tuple(ids.shape)} (flatten windows "
            "with .flatten())"
        )
    ids = ids.detach().to("cpu", torch.long)
    if ids.numel():
        lo, hi = int(ids.min()), int(ids.max())
        if lo < 0 or (d_vocab is not None and hi >= d_vocab):
            raise LapeError(
                f"corpus[{language!r}] holds token ids in [{lo}, {hi}], outside the model's "
                f"vocabulary [0, {d_vocab}); were they made with another tokenizer?"
            )
    return ids


def _token_chunks(
    adapter: ModelAdapter, source: Any, language: str, policy: WindowPolicy = COLLECTION
) -> Iterator[Tensor]:
    """The language's token stream, as a sequence of 1-D CPU LongTensor chunks."""
    d_vocab = getattr(getattr(adapter.model, "cfg", None), "d_vocab", None)
    if isinstance(source, Tensor):
        yield _check_token_tensor(source, language, d_vocab)
        return
    if isinstance(source, (str, bytes)):
        raise LapeError(
            f"corpus[{language!r}] is a single string; pass a list of documents, e.g. "
            f"{{{language!r}: [text]}}"
        )
    if not isinstance(source, Iterable):
        raise LapeError(
            f"corpus[{language!r}] must be an iterable of strings or a 1-D tensor of token ids; "
            f"received {type(source).__name__}"
        )
    yield from document_stream(adapter, source, policy, where=f"corpus[{language!r}]")


def document_stream(
    adapter: ModelAdapter, texts: Iterable[str], policy: WindowPolicy, *, where: str = "texts"
) -> Iterator[Int[Tensor, " n"]]:
    """Tokenize documents one at a time into one stream, with the policy's separator between.

    Yields 1-D CPU LongTensor chunks: a document's ids (a long document's in pieces of
    :data:`DOCUMENT_PIECE_CHARS` characters), then the separator, then the next document's ids,
    and so on; empty documents are skipped (no separator for them). Lazy: a caller that stops
    early tokenizes no further, not even the rest of a long document.

    Raises:
        LapeError: A document that is not a string (``where`` names the collection).
    """
    ids_between = policy.separator_ids(adapter)
    separator = torch.tensor(ids_between, dtype=torch.long) if ids_between else None
    first = True
    for i, doc in enumerate(texts):
        if not isinstance(doc, str):
            raise LapeError(
                f"{where} must hold strings (documents), or be one 1-D torch tensor of token "
                f"ids; item {i} is a {type(doc).__name__}; pass token ids as "
                "torch.as_tensor(ids) (one tensor per language), texts as a list of str"
            )
        started = False
        for piece in _document_pieces(doc):
            ids = adapter.encode(piece)
            if ids.numel() == 0:
                continue
            if not started and not first and separator is not None:
                yield separator
            started, first = True, False
            yield ids


def _document_pieces(doc: str, size: int = DOCUMENT_PIECE_CHARS) -> Iterator[str]:
    """``doc`` in pieces of at most ``size`` characters, each cut before the last space or
    newline of its second half when there is one (``"".join`` gives ``doc`` back)."""
    start = 0
    while len(doc) - start > size:
        end = start + size
        cut = max(doc.rfind(" ", start + size // 2, end), doc.rfind("\n", start + size // 2, end))
        end = cut if cut > start else end
        yield doc[start:end]
        start = end
    yield doc[start:]


def _iter_windows(chunks: Iterable[Tensor], settings: WindowSettings) -> Iterator[Tensor]:
    """Cut a token stream into windows of content tokens (without the BOS column).

    Never copies more than one window at a time, so a 100M-token tensor is cut in O(n).
    """
    content_len = settings.content_len
    budget = settings.max_tokens_per_language
    pending: list[Tensor] = []
    n_pending = 0
    taken = 0
    for chunk in chunks:
        if budget is not None:
            chunk = chunk[: budget - taken]
        taken += chunk.numel()
        start = 0
        while start < chunk.numel():
            piece = chunk[start : start + content_len - n_pending]
            pending.append(piece)
            n_pending += piece.numel()
            start += piece.numel()
            if n_pending == content_len:
                yield torch.cat(pending)
                pending, n_pending = [], 0
        if budget is not None and taken >= budget:
            break
    if n_pending and not settings.drop_last:
        yield torch.cat(pending)
    elif n_pending and taken == n_pending:
        # Not even one full window: say so instead of returning nothing.
        raise _TooShort(taken)


class _TooShort(Exception):
    def __init__(self, n_tokens: int) -> None:
        super().__init__(n_tokens)
        self.n_tokens = n_tokens


def iter_window_batches(
    adapter: ModelAdapter,
    corpus: Mapping[str, Any],
    settings: WindowSettings,
) -> Iterator[WindowBatch]:
    """Enumerate the batches of windows of ``corpus`` deterministically (see module docstring).

    The same corpus and settings always give the same batches with the same indices, so that
    several processes can each take a disjoint share (``batch.index % world_size == rank``) and
    an interrupted run can resume after a given batch index.
    """
    bos = adapter.bos_token_id if settings.prepend_bos else None
    if settings.prepend_bos and bos is None:
        raise LapeError(
            f"prepend_bos=True but the tokenizer of {adapter.model_name!r} has no BOS (or EOS) "
            "token; pass prepend_bos=False"
        )
    index = 0
    for lang_index, (language, source) in enumerate(corpus.items()):
        chunks = _token_chunks(adapter, source, language, settings.policy)
        windows = _iter_windows(chunks, settings)
        group: list[Tensor] = []
        seen_any = False
        while True:
            try:
                window = next(windows)
            except StopIteration:
                break
            except _TooShort as short:
                raise LapeError(
                    f"corpus[{language!r}] has only {short.n_tokens} tokens, fewer than one "
                    f"window of {settings.content_len} corpus tokens (seq_len={settings.seq_len}); "
                    "give more text or a lower seq_len (--seq-len on the command line); from "
                    "Python, drop_last=False also keeps a window shorter than seq_len"
                ) from None
            seen_any = True
            if window.numel() < settings.content_len:  # the short remainder (drop_last=False)
                if group:
                    yield _make_batch(index, language, lang_index, group, bos)
                    index += 1
                    group = []
                yield _make_batch(index, language, lang_index, [window], bos)
                index += 1
                continue
            group.append(window)
            if len(group) == settings.batch_size:
                yield _make_batch(index, language, lang_index, group, bos)
                index += 1
                group = []
        if group:
            yield _make_batch(index, language, lang_index, group, bos)
            index += 1
        if not seen_any:
            raise LapeError(
                f"corpus[{language!r}] is empty (no tokens); give every language some text or "
                "leave the language out"
            )


def _make_batch(
    index: int, language: str, lang_index: int, windows: list[Tensor], bos: int | None
) -> WindowBatch:
    tokens = torch.stack(windows)  # batch pos
    n_counted = tokens.numel()
    if bos is not None:
        bos_column = torch.full((tokens.shape[0], 1), bos, dtype=torch.long)
        tokens = torch.cat([bos_column, tokens], dim=1)  # batch pos+1
    return WindowBatch(index, language, lang_index, tokens, n_counted)


def token_windows(
    model: Any,
    texts: Iterable[str] | Tensor,
    *,
    seq_len: int = 256,
    max_tokens: int | None = None,
    prepend_bos: bool | None = None,
    policy: "WindowPolicy | None" = None,
) -> Int[Tensor, "batch pos"]:
    """Pack a language's text into windows of ``seq_len`` tokens for evaluation.

    Texts are tokenized without special tokens and joined into one stream, separated by
    ``EOS BOS`` (the demo model's training format; just ``BOS`` or nothing when the tokenizer
    lacks those; just ``EOS`` without ``prepend_bos``): the :func:`evaluation_policy`. Each
    window is ``BOS`` followed by ``seq_len - 1`` stream tokens (or
    ``seq_len`` stream tokens when ``prepend_bos`` is false); a partial last window is dropped.
    A 1-D tensor of token ids is used as the stream directly.

    Args:
        model: A TransformerLens model with a tokenizer.
        texts: The texts, or a 1-D tensor of token ids.
        seq_len: Tokens per window, the BOS included.
        max_tokens: Keep at most this many windows' worth of stream tokens (default: all).
        prepend_bos: Start windows with BOS (default: the model's ``cfg.default_prepend_bos``).
        policy: The BOS/separator policy (default: :func:`evaluation_policy` of
            ``prepend_bos``); e.g. :data:`COLLECTION` for the windows collection counts.

    Returns:
        An int64 tensor ``[n_windows, seq_len]`` on the CPU.

    Raises:
        LapeError: If the text holds less than one window.
    """
    adapter = adapt(model, validate=False)
    check_seq_len(seq_len)
    if seq_len < 2:
        raise LapeError(f"seq_len must be an int >= 2; received {seq_len!r}")
    if max_tokens is not None and (
        isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1
    ):
        raise LapeError(f"max_tokens must be a positive int or None; received {max_tokens!r}")
    if policy is None:
        if prepend_bos is None:
            prepend_bos = bool(getattr(getattr(model, "cfg", None), "default_prepend_bos", True))
        policy = evaluation_policy(prepend_bos)
    bos = adapter.bos_token_id if policy.prepend_bos else None
    body = seq_len - 1 if bos is not None else seq_len
    limit = None if max_tokens is None else max(body, max_tokens)
    if isinstance(texts, Tensor):
        if texts.ndim != 1 or texts.is_floating_point():
            raise LapeError(
                f"a token-id corpus must be a 1-D integer tensor; received a {texts.dtype} "
                f"tensor of shape {tuple(texts.shape)}"
            )
        stream = texts.to(torch.long).cpu()
        if limit is not None:
            stream = stream[:limit]
        adapter.check_token_ids(stream, "the token-id corpus")
    else:
        if isinstance(texts, str):
            raise LapeError(
                "texts must be an iterable of strings (e.g. a list of paragraphs), not one "
                "string; wrap it in a list"
            )
        pieces: list[Tensor] = []
        total = 0
        for piece in document_stream(adapter, texts, policy):
            pieces.append(piece)
            total += piece.numel()
            if limit is not None and total >= limit:
                break
        stream = torch.cat(pieces) if pieces else torch.zeros(0, dtype=torch.long)
        if limit is not None:
            stream = stream[:limit]
    n_windows = stream.numel() // body
    if n_windows == 0:
        raise LapeError(
            f"the text has {stream.numel()} tokens, less than one window of {body} tokens "
            f"(seq_len={seq_len}); pass more text or a smaller seq_len"
        )
    windows = stream[: n_windows * body].reshape(n_windows, body)  # batch pos
    if bos is not None:
        windows = torch.cat([torch.full((n_windows, 1), bos, dtype=torch.long), windows], dim=1)
    return windows
