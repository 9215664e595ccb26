"""Walking payload trees: the nested lists, tuples and dicts that op arguments and results are."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

_CONTAINERS = (list, tuple, dict)


def tree_map(fn: Callable[[Any], Any], value: Any, is_leaf: Callable[[Any], bool]) -> Any:
    """Apply `fn` to every leaf of nested lists, tuples and dict values."""
    if type(value) is list and _flat(value):
        return [fn(v) if is_leaf(v) else v for v in value]  # the common flat case
    if is_leaf(value):
        return fn(value)
    if isinstance(value, list):
        return [tree_map(fn, v, is_leaf) for v in value]
    if isinstance(value, tuple):
        return tuple(tree_map(fn, v, is_leaf) for v in value)
    if isinstance(value, dict):
        return {k: tree_map(fn, v, is_leaf) for k, v in value.items()}
    return value


def _flat(values: list[Any]) -> bool:
    for v in values:  # a loop, not any() over a generator: half the cost for a short list
        if isinstance(v, _CONTAINERS):
            return False
    return True
