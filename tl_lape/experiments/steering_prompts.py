"""Prompts for the steering study drawn from held-out text, and few-shot prompting examples.

A success rate over 12 prompts has a standard error of up to 14 points; to compare methods the
study needs many more prompts than anyone would write by hand. :func:`heldout_prompts` draws
them from held-out text (``load_corpus(..., split="heldout")``), disjoint between the
development and the fresh phase:

- ``english``: the first ``n_words`` words of distinct source-language paragraphs;
- ``neutral``: strings with no language of their own found in the same text: file paths,
  version and section numbers, command-line options (``/etc/apt/sources.list``, ``11.2``,
  ``--download-only``).

:func:`text_supply` says how much text each language has, so a plan can be checked against it
before anything runs. :func:`few_shot_examples` picks a few short target-language paragraphs
from the *train* split for the few-shot prompting baseline, refusing any text that also occurs
in the evaluation text; :func:`few_shot_prompt` puts them before a prompt. :func:`parallel_items`
draws the content setting's aligned paragraphs from several parallel sources (the handbook's and
the LibreOffice Help's), alternating them so that the content measure's mismatched prompt is
always one of the same source.

Example:
    >>> heldout = {"en": ["The server starts the daemon when the system boots up and then waits",
    ...                   "Edit /etc/hosts and run 2.1 again before you restart it",
    ...                   "Each user has a home directory where files are kept safe always"]}
    >>> p = heldout_prompts([heldout], n_dev=1, n_fresh=1, n_words=4, seed=0)
    >>> sorted(p), sorted(p["dev"])
    (['dev', 'fresh'], ['english', 'neutral'])
    >>> few_shot_prompt(["Bonjour.", "Merci."], "The server")
    'Bonjour.\\nMerci.\\nThe server'
"""

import random
import re
from collections.abc import Iterable, Mapping, Sequence

from tl_lape.checks import check_positive_int, check_seed
from tl_lape.errors import LapeError

__all__ = [
    "few_shot_examples",
    "few_shot_prompt",
    "heldout_prompts",
    "neutral_strings",
    "parallel_items",
    "text_supply",
]

#: Language-free strings: a path, a dotted number, or a command-line option, standing alone.
_NEUTRAL = re.compile(
    r"(?<![\w/])(/[A-Za-z0-9_.-]+(?:/[A-Za-z0-9_.-]+)*/?|\d+(?:\.\d+)+|--?[a-z][a-z-]+)(?!\w)"
)


def neutral_strings(texts: Iterable[str], *, max_chars: int = 24) -> list[str]:
    """The distinct language-free strings of ``texts`` (paths, dotted numbers, options), in order
    of first appearance, a final ``.`` dropped, at most ``max_chars`` long.

    Example:
        >>> neutral_strings(["Edit /etc/hosts. Then see 11.2 and run it with --verbose."])
        ['/etc/hosts', '11.2', '--verbose']
    """
    seen: dict[str, None] = {}
    for text in texts:
        for found in _NEUTRAL.findall(text):
            found = found.rstrip(".")
            if 2 <= len(found) <= max_chars:
                seen.setdefault(found, None)
    return list(seen)


def _english_prompts(texts: Iterable[str], n_words: int) -> list[str]:
    """The distinct first ``n_words`` words of the paragraphs with at least twice as many."""
    seen: dict[str, None] = {}
    for text in texts:
        words = text.split()
        if len(words) >= 2 * n_words:
            seen.setdefault(" ".join(words[:n_words]), None)
    return list(seen)


def heldout_prompts(
    corpora: Sequence[Mapping[str, Sequence[str]]],
    *,
    n_dev: int,
    n_fresh: int,
    source: str = "en",
    n_words: int = 8,
    seed: int = 0,
) -> dict[str, dict[str, list[str]]]:
    """Development and fresh prompts per setting (``english``, ``neutral``) from held-out text.

    Args:
        corpora: Held-out corpora (``{language: paragraphs}``), e.g. the handbook's and the
            LibreOffice Help's; only their ``source`` text is read.
        n_dev: Prompts per setting for the development phase.
        n_fresh: Prompts per setting for the fresh phase (disjoint from the development ones).
        source: The language of the ``english`` prompts.
        n_words: Words per ``english`` prompt (paragraphs of at least twice as many are used).
        seed: The shuffle that assigns the candidates to the phases.

    Returns:
        ``{"dev": {"english": [...], "neutral": [...]}, "fresh": {...}}``.

    Raises:
        LapeError: Too little text for ``n_dev + n_fresh`` prompts in a setting (the message
            says how many the text gives).
    """
    n_dev = check_positive_int(n_dev, "n_dev", example=16)
    n_fresh = check_positive_int(n_fresh, "n_fresh", example=48)
    n_words = check_positive_int(n_words, "n_words", example=8)
    seed = check_seed(seed)
    texts = [t for corpus in corpora for t in corpus.get(source, ())]
    candidates = {
        "english": _english_prompts(texts, n_words),
        "neutral": neutral_strings(texts),
    }
    out: dict[str, dict[str, list[str]]] = {"dev": {}, "fresh": {}}
    for setting, found in candidates.items():
        need = n_dev + n_fresh
        if len(found) < need:
            raise LapeError(
                f"the held-out {source!r} text gives {len(found)} distinct {setting} prompts; "
                f"n_dev + n_fresh = {need} are needed: pass more held-out text (another "
                "corpus) or fewer prompts"
            )
        order = list(found)
        random.Random(f"{seed}:{setting}").shuffle(order)
        out["dev"][setting] = order[:n_dev]
        out["fresh"][setting] = order[n_dev:need]
    return out


def parallel_items(
    sources: Sequence[Sequence[Mapping[str, str]]], n: int, *, seed: int = 0
) -> list[dict[str, str]]:
    """``n`` aligned items, an equal share from each source, alternating between the sources.

    Each source gives ``n // len(sources)`` items, a seeded sample kept in the source's order
    (so they spread over its pages or chapters rather than crowd its first one). Item ``i``
    comes from source ``i % len(sources)``. The content measure
    (:func:`~tl_lape.judging.continuation.content_nll`) scores each reference after the prompt
    ``n // 2`` items away; ``n // 2`` is a multiple of ``len(sources)``, so that prompt is always
    one of the same source, and the measure compares content, not domains.

    Args:
        sources: Lists of aligned items (``{language: paragraph}``), e.g.
            :func:`~tl_lape.sources.corpora.load_handbook_parallel` and
            :func:`~tl_lape.sources.corpora.load_libreoffice_parallel`.
        n: Items wanted: a multiple of ``2 * len(sources)``.
        seed: The sample's seed.

    Example:
        >>> a = [{"en": f"a{i}"} for i in range(5)]
        >>> b = [{"en": f"b{i}"} for i in range(9)]
        >>> [item["en"] for item in parallel_items([a, b], 4, seed=0)]
        ['a0', 'b3', 'a4', 'b8']
    """
    n = check_positive_int(n, "n", example=48)
    seed = check_seed(seed)
    k = len(sources)
    if k == 0 or n % (2 * k):
        raise LapeError(
            f"parallel_items needs n to be a multiple of 2 * len(sources) = {2 * k} so that "
            f"each item's mismatched prompt (n // 2 items away) is of the same source; "
            f"received n={n} for {k} sources: pass e.g. n={2 * k * max(1, n // (2 * k or 1))}"
        )
    share = n // k
    picks = []
    for j, items in enumerate(sources):
        if len(items) < share:
            raise LapeError(
                f"parallel source {j} has {len(items)} items; n={n} over {k} sources needs "
                f"{share} from each: pass a smaller n (a multiple of {2 * k}) or more items"
            )
        chosen = sorted(random.Random(f"{seed}:{j}").sample(range(len(items)), share))
        picks.append([dict(items[i]) for i in chosen])
    return [picks[i % k][i // k] for i in range(n)]


def text_supply(
    corpus: Mapping[str, Sequence[str]], languages: Sequence[str]
) -> dict[str, dict[str, int]]:
    """Per language, its paragraphs, characters and words (whitespace-separated) in ``corpus``.

    Example:
        >>> text_supply({"fr": ["Le chat dort.", "Oui."]}, ["fr", "de"])["fr"]
        {'paragraphs': 2, 'chars': 17, 'words': 4}
    """
    out = {}
    for lang in languages:
        texts = list(corpus.get(lang, ()))
        out[lang] = {
            "paragraphs": len(texts),
            "chars": sum(len(t) for t in texts),
            "words": sum(len(t.split()) for t in texts),
        }
    return out


def few_shot_examples(
    train: Mapping[str, Sequence[str]],
    targets: Sequence[str],
    *,
    k: int = 3,
    min_chars: int = 20,
    max_chars: int = 120,
    seed: int = 0,
    exclude: Iterable[str] = (),
) -> dict[str, list[str]]:
    """``k`` short paragraphs of each target language from a *train* corpus, for few-shot
    prompting.

    Args:
        train: The train split (``{language: paragraphs}``), never the evaluation text.
        targets: The languages to pick examples for.
        k: Examples per language.
        min_chars: The shortest paragraph taken.
        max_chars: The longest paragraph taken.
        seed: The draw among the eligible paragraphs.
        exclude: Evaluation texts (held-out paragraphs, references, prompts): no example may
            equal one, contain one or be contained in one.

    Returns:
        ``{language: [example, ...]}``, ``k`` per language.

    Raises:
        LapeError: A language with fewer than ``k`` eligible paragraphs.
    """
    k = check_positive_int(k, "k", example=3)
    seed = check_seed(seed)
    if not 0 < min_chars <= max_chars:
        raise LapeError(
            f"min_chars and max_chars must satisfy 0 < min_chars <= max_chars; received "
            f"{min_chars!r} and {max_chars!r}"
        )
    banned = [t for t in exclude if t]
    banned_set = set(banned)
    out: dict[str, list[str]] = {}
    for lang in targets:
        eligible = sorted(
            {
                " ".join(t.split())
                for t in train.get(lang, ())
                if min_chars <= len(" ".join(t.split())) <= max_chars
            }
        )
        eligible = [t for t in eligible if not _overlaps(t, banned, banned_set)]
        if len(eligible) < k:
            raise LapeError(
                f"the train text of {lang!r} has {len(eligible)} paragraphs of {min_chars} to "
                f"{max_chars} characters outside the evaluation text; few-shot prompting needs "
                f"k={k}: pass more train text, a smaller k or a wider max_chars"
            )
        out[lang] = random.Random(f"{seed}:{lang}").sample(eligible, k)
    return out


def _overlaps(text: str, banned: Sequence[str], banned_set: set[str]) -> bool:
    """Whether ``text`` equals, contains or is contained in an evaluation text."""
    if text in banned_set:
        return True
    return any(text in b or (len(b) >= 20 and b in text) for b in banned)


def few_shot_prompt(examples: Sequence[str], prompt: str) -> str:
    """The examples, one per line, then the prompt."""
    return "".join(f"{e}\n" for e in examples) + prompt
