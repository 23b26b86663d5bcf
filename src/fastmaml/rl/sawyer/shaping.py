"""Meta-World's reward shaping (``metaworld/utils/reward_utils.py``) over a leading environment axis."""

from __future__ import annotations

import numpy as np

_VALUE_AT_MARGIN = 0.1
_LONG_TAIL_SCALE = np.sqrt(1 / _VALUE_AT_MARGIN - 1)  # reward_utils._sigmoids(..., "long_tail")
_GAUSSIAN_SCALE = np.sqrt(-2 * np.log(_VALUE_AT_MARGIN))  # reward_utils._sigmoids(..., "gaussian")


def tolerance(x: np.ndarray, lower: float, upper: float, margin: np.ndarray | float, sigmoid: str = "long_tail"
              ) -> np.ndarray:
    """``reward_utils.tolerance(x, bounds=(lower, upper), margin=margin, sigmoid=sigmoid)`` elementwise, for the
    ``"long_tail"`` and ``"gaussian"`` sigmoids.

    Example:
        >>> tolerance(np.array([0.02, 0.1, 0.3]), 0, 0.05, np.array(0.25)).round(3).tolist()  # 0.1 at the margin
        [1.0, 0.735, 0.1]
    """
    in_bounds = (lower <= x) & (x <= upper)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        d = np.where(x < lower, lower - x, x - upper) / margin
        if sigmoid == "gaussian":
            value = np.exp(-0.5 * (d * _GAUSSIAN_SCALE) ** 2)
        else:
            value = 1 / ((d * _LONG_TAIL_SCALE) ** 2 + 1)
        outside = np.where(margin == 0, 0.0, value)
    return np.where(in_bounds, 1.0, outside)


def hamacher(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``reward_utils.hamacher_product(a, b)`` elementwise: a b / (a + b - a b), 0 where that is not positive."""
    denominator = a + b - (a * b)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(denominator > 0, (a * b) / denominator, 0.0)


def norm(x: np.ndarray) -> np.ndarray:
    """``np.linalg.norm`` of each row, bit for bit: like it, each row's ``dot`` with itself (a batched ``matmul`` of
    1-by-n rows by n-by-1 columns runs numpy's ``dot`` per row), whose rounding (BLAS's, fused multiply-adds on some
    builds) an elementwise ``(x * x).sum(-1)`` does not share."""
    rows = np.ascontiguousarray(x, dtype=np.float64)
    return np.sqrt((rows[..., None, :] @ rows[..., :, None])[..., 0, 0])


def rect_prism(point: np.ndarray, zero: np.ndarray, one: np.ndarray) -> np.ndarray:
    """``reward_utils.rect_prism_tolerance(curr=point, zero=zero, one=one)``: inside the box of corners ``zero`` and
    ``one``, the product of the point's fractions of the way from ``zero`` to ``one``; 1 outside."""
    inside = ((np.minimum(zero, one) <= point) & (point <= np.maximum(zero, one))).all(-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        fraction = (point - zero) / (one - zero)
    return np.where(inside, fraction[:, 0] * fraction[:, 1] * fraction[:, 2], 1.0)

