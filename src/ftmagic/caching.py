"""A per-process LRU cache that stores and hands out deep copies.

Its callers change what they get (a model they train, a report they add to), so a cached value
must never be shared: each ``get`` returns a copy of it, and ``put`` keeps a copy of its own.
"""

from __future__ import annotations

import copy
import threading
from collections.abc import Hashable
from typing import Generic, TypeVar

from cachetools import LRUCache

V = TypeVar("V")


class CopyCache(Generic[V]):
    """An LRU of at most ``maxsize`` values, safe across threads; a ``None`` key is never kept."""

    def __init__(self, maxsize: int) -> None:
        self._items: LRUCache[Hashable, V] = LRUCache(maxsize=maxsize)
        self._lock = threading.Lock()

    def get(self, key: Hashable | None) -> V | None:
        """A copy of the value kept under ``key`` (now the most recent), or ``None``."""
        if key is None:
            return None
        with self._lock:
            value = self._items.get(key)
            return None if value is None else copy.deepcopy(value)

    def put(self, key: Hashable | None, value: V) -> None:
        """Keep a copy of ``value``; the least recently used value goes when the cache is full."""
        if key is None:
            return
        kept = copy.deepcopy(value)
        with self._lock:
            self._items[key] = kept

    def clear(self) -> None:
        with self._lock:
            self._items.clear()

    def __len__(self) -> int:
        return len(self._items)
