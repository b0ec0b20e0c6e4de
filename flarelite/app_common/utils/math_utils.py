"""parse_compare_criteria: read ``"<key> <op> <value>"`` stop conditions such as ``"accuracy >= 80"``."""

from __future__ import annotations

import operator
from typing import Callable

operator_mapping: dict[str, Callable] = {
    ">=": operator.ge,
    "<=": operator.le,
    ">": operator.gt,
    "<": operator.lt,
    "=": operator.eq,
}


def parse_compare_criteria(compare_expr: str | None = None) -> tuple[str, float, Callable]:
    """Return ``(key, target, op_fn)`` for ``"<key> <op> <value>"``; ``op`` is one of ``>= <= > < =``.

    Raises:
        ValueError: the expression does not have three space-separated parts, the operator is unknown, or the
            value is not a number.
    """
    if not isinstance(compare_expr, str):
        raise ValueError(f"compare criteria must be a str like 'accuracy >= 80', got {compare_expr!r}")
    tokens = compare_expr.split(" ")
    if len(tokens) != 3:
        raise ValueError(
            f"Invalid compare criteria {compare_expr!r}: expecting the form '<metric> <op> <value>' "
            "with single spaces, e.g. 'accuracy >= 80'"
        )
    key, op, value = tokens
    if op not in operator_mapping:
        raise ValueError(
            f"Invalid compare criteria {compare_expr!r}: operator {op!r} is not one of {list(operator_mapping)}"
        )
    try:
        target = float(value)
    except ValueError:
        raise ValueError(f"Invalid compare criteria {compare_expr!r}: {value!r} is not a number") from None
    return key, target, operator_mapping[op]
