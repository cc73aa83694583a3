"""Uncertainty for every effect: paired bootstrap intervals and empirical p-values.

Model-free and small on purpose, so that every report computes its intervals the same way:

- :func:`bootstrap_weights` draws bootstrap replicates as *weights* over items (windows or
  documents): replicate ``b`` gives item ``i`` the number of times its cluster was drawn. Any
  statistic that is a weighted sum (a mean NLL per token is ``w @ nll_sums / w @ token_counts``)
  is then computed for all replicates at once, and two rows measured on the same items (clean
  and intervened) are *paired* by using the same weights.
- :func:`percentile_interval` turns replicates into an :class:`Estimate` (the point estimate of
  the full sample with an *expanded* percentile interval: with few independent units a plain
  percentile interval is too narrow, so its tail probabilities are widened for the number of
  units, see :func:`expanded_tail`). One item, or one cluster, gives no interval:
  ``low``/``high`` are ``None`` and the estimate prints as ``± n/a``, never ``± 0``.
- :func:`empirical_p_value` compares an observed value with draws from a null distribution
  (random neuron sets) as ``(1 + #{draws at least as extreme}) / (1 + n)``; with ``n`` draws the
  smallest attainable p-value is ``1 / (n + 1)``, so p < 0.05 needs at least 20 draws.

Example:
    >>> import torch
    >>> w = bootstrap_weights(4, n_boot=1000, seed=0)
    >>> values = torch.tensor([1.0, 2.0, 3.0, 4.0], dtype=torch.float64)
    >>> est = percentile_interval((w @ values) / w.sum(1), point=2.5, n_units=4)
    >>> est.low < 2.5 < est.high
    True
    >>> empirical_p_value(10.0, [1.0, 2.0, 3.0])
    0.25
"""

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor

from tl_lape.checks import check_choice, check_n_boot, check_positive_int, check_seed
from tl_lape.errors import LapeError

__all__ = [
    "DEFAULT_N_BOOT",
    "Estimate",
    "bootstrap_weights",
    "empirical_p_value",
    "expanded_tail",
    "min_p_value",
    "percentile_interval",
]

#: Bootstrap replicates used by default: percentile limits of a 95% interval move by well under
#: a tenth of its width between seeds at this size.
DEFAULT_N_BOOT = 2000


@dataclass(frozen=True)
class Estimate:
    """A point estimate with its bootstrap interval (``None`` limits: no interval possible).

    Attributes:
        value: The estimate on the full sample.
        low: Lower limit of the interval, or None when it cannot be computed.
        high: Upper limit, or None.
        n: Independent units resampled (windows, or documents when clustered).
        level: Coverage of the interval.
    """

    value: float
    low: float | None
    high: float | None
    n: int
    level: float = 0.95

    @property
    def has_interval(self) -> bool:
        """Whether an interval could be computed (at least two independent units)."""
        return self.low is not None and self.high is not None

    @property
    def half_width(self) -> float | None:
        """Half the interval's width, or None without an interval."""
        if self.low is None or self.high is None:
            return None
        return (self.high - self.low) / 2

    def excludes(self, value: float = 0.0) -> bool:
        """Whether the interval lies entirely above or below ``value`` (False without one)."""
        if self.low is None or self.high is None:
            return False
        return self.low > value or self.high < value

    def format(self, digits: int = 3, *, sign: bool = False) -> str:
        """``"1.234 [1.100, 1.400]"``, or ``"1.234 ± n/a"`` without an interval; ``"n/a"``
        when the value is not finite. ``sign=True`` writes ``+`` before positive numbers.

        Example:
            >>> Estimate(1.0, None, None, n=1).format(2)
            '1.00 ± n/a'
            >>> Estimate(1.0, 0.5, 1.5, n=8).format(1)
            '1.0 [0.5, 1.5]'
            >>> Estimate(0.25, -0.5, 1.0, n=8).format(2, sign=True)
            '+0.25 [-0.50, +1.00]'
        """
        if not math.isfinite(self.value):
            return "n/a"
        spec = f"{'+' if sign else ''}.{digits}f"
        point = format(self.value, spec)
        if self.low is None or self.high is None:
            return f"{point} ± n/a"
        return f"{point} [{format(self.low, spec)}, {format(self.high, spec)}]"

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe: non-finite values become None."""

        def finite(x: float | None) -> float | None:
            return x if x is not None and math.isfinite(x) else None

        return {
            "value": finite(self.value),
            "low": finite(self.low),
            "high": finite(self.high),
            "n": self.n,
            "level": self.level,
        }

    @classmethod
    def from_dict(cls, data: Any) -> "Estimate":
        """The inverse of :meth:`to_dict`."""
        if not isinstance(data, dict) or "value" not in data or "n" not in data:
            raise LapeError(
                f"an estimate must be a dict with 'value', 'low', 'high' and 'n'; got {data!r}"
            )
        value = data["value"]
        return cls(
            value=float("nan") if value is None else float(value),
            low=None if data.get("low") is None else float(data["low"]),
            high=None if data.get("high") is None else float(data["high"]),
            n=int(data["n"]),
            level=float(data.get("level", 0.95)),
        )


def bootstrap_weights(
    n_items: int,
    *,
    clusters: Sequence[int] | Int[Tensor, " item"] | None = None,
    n_boot: int = DEFAULT_N_BOOT,
    seed: int = 0,
) -> Float[Tensor, "boot item"]:
    """Bootstrap replicates as item weights (float64), resampling clusters with replacement.

    Args:
        n_items: Items (windows) measured.
        clusters: The cluster (document) of each item; items of one cluster are drawn
            together. Default: every item is its own cluster.
        n_boot: Replicates.
        seed: Seed of the draws (a CPU generator: the same weights on every machine).

    Returns:
        ``[n_boot, n_items]``: how often each item's cluster was drawn in each replicate.

    Example:
        >>> w = bootstrap_weights(3, clusters=[7, 7, 9], n_boot=5, seed=1)
        >>> bool((w[:, 0] == w[:, 1]).all())  # one document's windows are drawn together
        True
    """
    check_positive_int(n_items, "n_items")
    check_n_boot(n_boot)
    check_seed(seed)
    if clusters is None:
        ids = torch.arange(n_items)
    else:
        ids = torch.as_tensor(list(clusters) if not isinstance(clusters, Tensor) else clusters)
        if ids.dim() != 1 or ids.numel() != n_items:
            raise LapeError(
                f"clusters must give one cluster id per item ({n_items}); received "
                f"shape {tuple(ids.shape)}"
            )
    _, codes = torch.unique(ids, return_inverse=True)  # item -> 0..n_clusters-1
    n_clusters = int(codes.max()) + 1
    generator = torch.Generator().manual_seed(seed)
    draws = torch.randint(n_clusters, (n_boot, n_clusters), generator=generator)
    counts = torch.zeros(n_boot, n_clusters, dtype=torch.float64)
    counts.scatter_add_(1, draws, torch.ones_like(draws, dtype=torch.float64))
    return counts[:, codes]  # boot item


def _t_two_sided(t: float, df: int) -> float:
    """P(|T| <= t) for Student's t with an integer ``df`` (the finite series of Abramowitz and
    Stegun 26.7.3-4)."""
    theta = math.atan(t / math.sqrt(df))
    s, c = math.sin(theta), math.cos(theta)
    if df % 2 == 1:
        total, term = 0.0, c
        for k in range(1, (df - 1) // 2 + 1):  # cos, cos^3 (2/3), cos^5 (2*4)/(3*5), ...
            total += term
            term *= c * c * (2 * k) / (2 * k + 1)
        return (2 / math.pi) * (theta + (s * total if df > 1 else 0.0))
    total, term = 0.0, 1.0
    for k in range(1, df // 2 + 1):  # 1, cos^2 (1/2), cos^4 (1*3)/(2*4), ...
        total += term
        term *= c * c * (2 * k - 1) / (2 * k)
    return s * total


@functools.lru_cache(maxsize=256)
def expanded_tail(n_units: int, level: float = 0.95, df: int | None = None) -> float:
    """The tail probability an expanded percentile interval takes from each side.

    A plain percentile interval from ``n`` independent units behaves like a normal interval
    with the variance divided by ``n`` instead of ``n - 1`` and a normal instead of a t
    quantile, so it is too narrow when ``n`` is small (a nominal 95% interval of a mean covers
    about 80% at n = 4 for normal data). Following Hesterberg's expanded percentile interval,
    the tail is ``Phi(-sqrt(n / (n - 1)) * t_{n-1})``, with ``t_{n-1}`` the t quantile of the
    plain tail ``(1 - level) / 2``: about 0.00012 at n = 4, 0.022 at n = 60, tending to
    ``(1 - level) / 2``. ``df`` (default ``n - 1``) is for stratified resampling: a mean over
    strata of ``n`` units each has ``sum(n_k - 1)`` degrees of freedom, while each stratum's
    variance is still shrunk by ``(n - 1) / n``.

    Example:
        >>> round(expanded_tail(4), 5), round(expanded_tail(60), 3), round(expanded_tail(10**6), 3)
        (0.00012, 0.022, 0.025)
    """
    if not 0 < level < 1:
        raise LapeError(f"level must lie strictly between 0 and 1, e.g. 0.95; received {level!r}")
    check_positive_int(n_units, "n_units")
    if n_units < 2:
        raise LapeError(f"an interval needs at least 2 independent units; received {n_units}")
    if df is None:
        df = n_units - 1
    check_positive_int(df, "df")
    central = level  # P(|T| <= t) sought
    if df > 2000:  # t is normal to within 0.05% of z here
        t = float(torch.special.ndtri(torch.tensor(1 - (1 - level) / 2, dtype=torch.float64)))
    else:
        lo, hi = 0.0, 1.0
        while _t_two_sided(hi, df) < central:
            hi *= 2
        for _ in range(200):
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if _t_two_sided(mid, df) < central else (lo, mid)
        t = (lo + hi) / 2
    return 0.5 * math.erfc(math.sqrt(n_units / (n_units - 1)) * t / math.sqrt(2))


def percentile_interval(
    replicates: Float[Tensor, " boot"],
    *,
    point: float,
    n_units: int,
    level: float = 0.95,
    df: int | None = None,
) -> Estimate:
    """The expanded percentile interval of bootstrap ``replicates`` around the full-sample
    ``point``: the replicates' quantiles at :func:`expanded_tail` of ``n_units`` from each side.

    With few units the tails are far out (at 4 units, near the smallest and largest
    replicates): an honest interval is then wide; with many it is the plain percentile interval.

    Args:
        replicates: The statistic in each replicate.
        point: The statistic on the full sample.
        n_units: Independent units resampled (clusters, not replicates); fewer than 2 gives
            no interval. With stratified resampling (e.g. each language's windows), pass the
            fewest units of any stratum: the interval is then conservative.
        level: Nominal coverage, strictly between 0 and 1.
        df: Degrees of freedom of the statistic (default ``n_units - 1``): for a mean over
            strata resampled separately, the sum over strata of units minus one.

    Returns:
        An :class:`Estimate`; without an interval when ``n_units < 2`` or the replicates are not
        finite.
    """
    if not 0 < level < 1:
        raise LapeError(f"level must lie strictly between 0 and 1, e.g. 0.95; received {level!r}")
    reps = replicates.detach().to(torch.float64).flatten()
    if isinstance(n_units, bool) or not isinstance(n_units, int) or n_units < 0:
        raise LapeError(
            f"n_units must be the number of independent units resampled (an int >= 0); "
            f"received {n_units!r}; pass e.g. the number of documents or windows"
        )
    n = n_units
    if n < 2 or reps.numel() < 2 or not bool(torch.isfinite(reps).all()):
        return Estimate(float(point), None, None, n=n, level=level)
    alpha = expanded_tail(n, level, df)
    low, high = torch.quantile(reps, torch.tensor([alpha, 1 - alpha], dtype=torch.float64))
    return Estimate(float(point), float(low), float(high), n=n, level=level)


def empirical_p_value(
    observed: float,
    null: Sequence[float] | Float[Tensor, " draw"],
    *,
    alternative: str = "greater",
) -> float | None:
    """``(1 + #{null draws at least as extreme as observed}) / (1 + n)``; None without finite
    draws or for an undefined (non-finite) observation, never a small p-value.

    ``alternative="greater"`` asks whether ``observed`` is larger than chance. The result is
    never below :func:`min_p_value` of the number of draws.

    Example:
        >>> empirical_p_value(5.0, [1.0] * 19)
        0.05
        >>> empirical_p_value(0.5, [1.0, 0.0])
        0.6666666666666666
    """
    draws = torch.as_tensor(null, dtype=torch.float64).flatten()
    draws = draws[torch.isfinite(draws)]  # an undefined draw is no evidence either way
    if draws.numel() == 0 or not math.isfinite(observed):
        return None
    check_choice(alternative, ("greater", "less"), "alternative")
    extreme = draws >= observed if alternative == "greater" else draws <= observed
    return (1 + int(extreme.sum())) / (1 + draws.numel())


def min_p_value(n_draws: int) -> float:
    """The smallest p-value :func:`empirical_p_value` can give with ``n_draws`` draws.

    Example:
        >>> min_p_value(19)
        0.05
    """
    return 1 / (1 + n_draws)
