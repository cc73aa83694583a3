"""Equal tuning budgets: every method tries the same number of configurations on the same
development prompts, by successive halving.

A method tuned over 36 configurations and compared with one tuned over 9 wins partly by having
had more tries. Here every method gets one budget: :func:`sample_configs` takes exactly
``budget`` configurations from each method's grid (all of them when the grid has exactly that
many; a seeded sample when it has more; an error when it has fewer), and
:func:`successive_halving` runs all methods through the same rounds on the same prompts.

Successive halving (Jamieson and Talwalkar, 2016): the development prompts of each setting are
cut into ``rounds + 1`` chunks, the first two of equal size and each later one as large as all
before it (:func:`halving_chunks`: 16 prompts, 2 rounds: 4, 4, 8). Round ``k`` runs the
surviving configurations on chunk ``k`` only; each configuration's score pools every chunk it
has run on, so no output is generated twice; the better half (rounded up) of each method
survives to the next round. The last round's survivors have run on every prompt, and the
method's choice is the best of them. With ``rounds=0`` it is a plain sweep.

Example:
    >>> halving_chunks(16, rounds=2)
    [slice(0, 4, None), slice(4, 8, None), slice(8, 16, None)]
    >>> scores = {"a": 1, "b": 3, "c": 2, "d": 0}
    >>> ran = []
    >>> best, history = successive_halving(
    ...     {"m": ["a", "b", "c", "d"]}, lambda alive, k: ran.append((k, alive)),
    ...     lambda c: scores[c], rounds=1)
    >>> best, history
    ({'m': 'b'}, [{'m': ['a', 'b', 'c', 'd']}, {'m': ['b', 'c']}])
"""

import math
import random
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

from tl_lape.checks import check_positive_int, check_seed
from tl_lape.errors import LapeError

__all__ = ["halving_chunks", "sample_configs", "successive_halving"]

C = TypeVar("C")


def check_rounds(rounds: Any) -> int:
    """``rounds`` as an int of at least 0, or a LapeError."""
    if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 0:
        raise LapeError(
            f"halving_rounds must be an int of at least 0 (0: a plain sweep); received "
            f"{rounds!r}; pass e.g. halving_rounds=2"
        )
    return rounds


def halving_chunks(n_prompts: int, *, rounds: int, min_size: int = 1) -> list[slice]:
    """The prompt chunk of each round: chunk ``k`` ends at ``ceil(n * 2**(k - rounds))``.

    Args:
        n_prompts: Development prompts of a setting.
        rounds: Halving rounds (``rounds + 1`` chunks).
        min_size: The fewest prompts a chunk may hold (the content judge needs 2).

    Raises:
        LapeError: A chunk would be smaller than ``min_size``.
    """
    rounds = check_rounds(rounds)
    n_prompts = check_positive_int(n_prompts, "n_prompts", example=16)
    ends = [math.ceil(n_prompts * 2.0 ** (k - rounds)) for k in range(rounds + 1)]
    chunks = [slice(a, b) for a, b in zip([0, *ends[:-1]], ends, strict=True)]
    small = [c.stop - c.start for c in chunks if c.stop - c.start < min_size]
    if small:
        raise LapeError(
            f"{n_prompts} development prompts cut for {rounds} halving rounds give chunks of "
            f"{[c.stop - c.start for c in chunks]} prompts; each needs at least {min_size}: "
            f"pass at least {min_size * 2**rounds} prompts or fewer rounds"
        )
    return chunks


def sample_configs(grid: Sequence[C], budget: int, *, method: str, seed: int = 0) -> list[C]:
    """Exactly ``budget`` configurations of ``grid``, in grid order: all of them, or a sample
    seeded by ``seed`` and ``method``.

    Raises:
        LapeError: The grid has fewer than ``budget`` configurations.
    """
    budget = check_positive_int(budget, "dev_budget", example=12)
    seed = check_seed(seed)
    grid = list(grid)
    if len(grid) < budget:
        raise LapeError(
            f"the {method} grid has {len(grid)} configurations, fewer than dev_budget={budget}; "
            f"every method must try the same number: widen the {method} grid or lower "
            "dev_budget"
        )
    keep = sorted(random.Random(f"{seed}:{method}").sample(range(len(grid)), budget))
    return [grid[i] for i in keep]


def successive_halving(
    groups: Mapping[str, Sequence[C]],
    run_round: Callable[[list[C], int], Any],
    score: Callable[[C], Any],
    *,
    rounds: int,
) -> tuple[dict[str, C], list[dict[str, list[C]]]]:
    """Successive halving of each group (method) of configurations, all groups in each round.

    Args:
        groups: Per method, its configurations (e.g. from :func:`sample_configs`).
        run_round: ``run_round(alive, k)`` runs every surviving configuration (of all methods
            together) on round ``k``'s chunk of the development prompts.
        score: A configuration's score over every chunk it has run on (higher is better;
            ties keep the grid order).
        rounds: Halving rounds (0: a plain sweep).

    Returns:
        ``(chosen, history)``: per method the best configuration after the last round, and per
        round the configurations run, per method.
    """
    rounds = check_rounds(rounds)
    alive = {m: list(cs) for m, cs in groups.items() if cs}
    history: list[dict[str, list[C]]] = []
    chosen: dict[str, C] = {}
    for k in range(rounds + 1):
        run_round([c for cs in alive.values() for c in cs], k)
        history.append({m: list(cs) for m, cs in alive.items()})
        for method, cs in alive.items():
            ranked = sorted(cs, key=score, reverse=True)  # stable: ties keep grid order
            chosen[method] = ranked[0]
            alive[method] = ranked[: max(1, math.ceil(len(cs) / 2))]
    return chosen, history
