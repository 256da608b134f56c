"""How every summary writes a mean over seeds and a percentage: ``confirm.txt``, the transfer table, the
report, ``pareto``'s tables and the benchmark scripts. One seed has no spread to show, so its sd is None
and is written ``n/a``, never ``0``."""

from __future__ import annotations

import statistics


def mean_sd(xs) -> tuple[float | None, float | None]:
    """Mean and sample sd of the values that are not None; (None, None) without any, sd None for one."""
    xs = [x for x in xs if x is not None]
    if not xs:
        return None, None
    return statistics.fmean(xs), (statistics.stdev(xs) if len(xs) > 1 else None)


def format_mean_sd(
    mean, sd, scale: float = 1.0, digits: int = 4, unit: str = "", sign: str = "", missing: str = "n/a"
) -> str:
    """``mean ± sd``, each times `scale` with `digits` decimals; `unit` after the mean (``%``), `sign` ``+`` to
    sign it; `missing` where there is no mean."""
    if mean is None:
        return missing
    spread = "n/a" if sd is None else f"{scale * sd:.{digits}f}"
    return f"{scale * mean:{sign}.{digits}f}{unit} ± {spread}"


def format_values(xs, scale: float = 1.0, digits: int = 4, unit: str = "", sign: str = "", missing: str = "n/a") -> str:
    """``format_mean_sd`` of the values in `xs`."""
    return format_mean_sd(*mean_sd(xs), scale=scale, digits=digits, unit=unit, sign=sign, missing=missing)


def pct(x, digits: int = 1) -> str:
    """A fraction as a signed percentage (``+12.3%``); '' for None."""
    return "" if x is None else f"{100 * x:+.{digits}f}%"
