"""Static-shape mode, for capturing a decode step into a CUDA graph: inside `static_shapes()` the forwards make no
host syncs and no data-dependent shapes (attention reads the whole cache under a mask, MoE gathers the chosen
experts' weights instead of looping over the distinct ones)."""
from __future__ import annotations

import threading
from contextlib import contextmanager
from typing import Iterator

__all__ = ["static_shapes", "is_static"]

_state = threading.local()


@contextmanager
def static_shapes() -> Iterator[None]:
    """
    >>> with static_shapes():
    ...     is_static()
    True
    >>> is_static()
    False
    """
    before = is_static()
    _state.on = True
    try:
        yield
    finally:
        _state.on = before


def is_static() -> bool:
    return getattr(_state, "on", False)
