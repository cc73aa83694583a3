"""The argument checks shared by every layer: one function per kind of option.

Each public option of tl_lape is checked once, where it enters the library, by one of these
functions, so that the same mistake gets the same message from the API and the CLI.
"""

import re
from collections.abc import Sequence
from typing import Any, TypeVar

from tl_lape.errors import LapeError

__all__ = [
    "MAX_N_BOOT",
    "check_choice",
    "check_language_codes",
    "check_languages",
    "check_n_boot",
    "check_positive_int",
    "check_rate",
    "check_seed",
    "shown",
]

T = TypeVar("T", bound=str)


def check_languages(languages: Any, field_name: str = "languages") -> tuple[str, ...]:
    """Validate a sequence of distinct, non-empty language codes and return it as a tuple."""
    if isinstance(languages, str) or not isinstance(languages, Sequence):
        raise LapeError(
            f"{field_name} must be a sequence of language codes such as ('en', 'zh'); "
            f"received {shown(languages)}"
        )
    langs = tuple(languages)
    if not langs:
        raise LapeError(f"{field_name} must name at least one language; received an empty sequence")
    bad = [lang for lang in langs if not isinstance(lang, str) or not lang]
    if bad:
        raise LapeError(
            f"{field_name} must be non-empty strings; received {shown(bad)} in {shown(langs)}"
        )
    dupes = sorted({lang for lang in langs if langs.count(lang) > 1})
    if dupes:
        raise LapeError(f"{field_name} must be distinct; {shown(dupes)} repeated in {shown(langs)}")
    return langs


def shown(value: Any, most: int = 120) -> str:
    """``repr(value)``, cut to ``most`` characters with its length, for messages: a value
    received can be a 5,000-character code or a list of ten thousand, and an error stays one
    readable line.

    Example:
        >>> print(shown("f" * 500, 20))
        'fffffffffffffff... (502 characters)
    """
    text = repr(value)
    return text if len(text) <= most else f"{text[: most - 4]}... ({len(text)} characters)"


#: What a language code read from a file may look like: letters or digits (of any script), ``-``
#: and ``_``, so it can never name another path when it becomes a file name (``DIR/<lang>.txt``).
_CODE = re.compile(r"[^\W_][\w-]{0,63}")


def check_language_codes(languages: Any, where: str) -> None:
    """Refuse language codes that are not plain codes (path separators, dots, spaces...)."""
    bad = [
        lang
        for lang in (languages if isinstance(languages, (list, tuple)) else [])
        if not isinstance(lang, str) or not _CODE.fullmatch(lang)
    ]
    if bad:
        raise LapeError(
            f"{where} has invalid language codes {shown(bad)}: a code is 1-64 letters, digits, '-' "
            "or '_' (such as 'en' or 'zh-Hans'), with no '/', '\\', '.' or spaces: never a path"
        )


def check_positive_int(value: Any, field_name: str, *, example: int = 8) -> int:
    """``value`` as a positive int (bools refused), or a LapeError naming ``field_name``, the
    value received and an ``example`` of a valid one."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise LapeError(
            f"{field_name} must be a positive int; received {value!r}; pass a whole number of "
            f"at least 1, e.g. {field_name}={example}"
        )
    return value


#: Most bootstrap replicates tl_lape accepts: far above the 2,000 a 95% interval needs, and a
#: bound on the replicate weights it allocates (``n_boot`` x windows).
MAX_N_BOOT = 100_000


def check_n_boot(value: Any, name: str = "n_boot", *, least: int = 1, example: int = 2000) -> int:
    """``value`` as a number of bootstrap replicates: an int from ``least`` to
    :data:`MAX_N_BOOT` (bools refused), or a LapeError naming ``name``.

    Example:
        >>> try:
        ...     check_n_boot(10**12)
        ... except LapeError as err:
        ...     print(str(err)[:58])
        n_boot must be an int from 1 to 100000 (bootstrap replicat
    """
    if isinstance(value, bool) or not isinstance(value, int) or not least <= value <= MAX_N_BOOT:
        raise LapeError(
            f"{name} must be an int from {least} to {MAX_N_BOOT} (bootstrap replicates); "
            f"received {shown(value)}; pass e.g. {name}={example}"
        )
    return value


# A sensible value of each rate, quoted by the message for an invalid one (the paper's defaults).
_RATE_EXAMPLES = {"top_rate": 0.01, "filter_rate": 0.95, "activation_bar_ratio": 0.95}


def check_rate(value: Any, name: str) -> float:
    """``value`` as a fraction strictly between 0 and 1, or a LapeError naming ``name``."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and 0 < value < 1
    if not ok:
        raise LapeError(
            f"{name} must be a number strictly between 0 and 1 (a fraction, e.g. "
            f"{_RATE_EXAMPLES.get(name, 0.5)}); "
            f"received {value!r}"
        )
    return float(value)


#: Seeds are passed to :func:`torch.Generator.manual_seed`, which takes a 64-bit integer.
_SEED_LIMIT = 2**63


def check_seed(value: Any, name: str = "seed") -> int:
    """``value`` as a seed: an int in ``[0, 2**63)`` (bools refused), or a LapeError."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < _SEED_LIMIT:
        raise LapeError(
            f"{name} must be an integer between 0 and 2**63 - 1; received {value!r}; pass e.g. "
            f"{name}=0"
        )
    return value


def check_choice(value: Any, choices: Sequence[T], name: str) -> T:
    """``value`` if it is one of ``choices`` (exact, case-sensitive), else a LapeError."""
    for choice in choices:
        if isinstance(value, str) and value == choice:
            return choice
    raise LapeError(f"{name} must be one of {list(choices)}; received {value!r}")
