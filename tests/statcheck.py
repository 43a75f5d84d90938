"""Goodness-of-fit helpers for the statistical tests of the random ops."""

import torch


def chi_square_bound(df: int, sigmas: float = 6.0) -> float:
    """A bound a chi-square statistic with `df` degrees of freedom exceeds with negligible chance.

    Normal approximation of the chi-square: mean df, variance 2 df.
    """
    return df + sigmas * (2.0 * df) ** 0.5


def chi_square(counts: torch.Tensor, probs: torch.Tensor, min_expected: float = 5.0) -> tuple:
    """Pearson's statistic of observed `counts` against `probs`, pooling cells expected < 5.

    Returns (statistic, degrees of freedom); the statistic is inf when an outcome of
    probability 0 was observed.
    """
    counts = counts.double()
    n = counts.sum()
    expected = probs.double() * n
    if counts[probs == 0].sum() > 0:
        return float("inf"), int((probs > 0).sum().item()) - 1
    small = expected < min_expected
    obs = torch.cat([counts[~small], counts[small].sum().reshape(1)])
    exp = torch.cat([expected[~small], expected[small].sum().reshape(1)])
    keep = exp > 0
    obs, exp = obs[keep], exp[keep]
    stat = ((obs - exp) ** 2 / exp).sum().item()
    return stat, int(keep.sum().item()) - 1
