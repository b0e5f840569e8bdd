"""A small LRU of decoded lz4 frames, bounded in bytes, shared by threads."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Hashable

DEFAULT_BUDGET = 64 * 1024 * 1024


class DecodedCache:
    """Keeps recently decoded pieces so nearby reads decode a frame once.

    Bounded in bytes rather than entries because an lz4 frame of a stream
    may decode to anything up to 32 MiB.
    """

    def __init__(self, budget: int = DEFAULT_BUDGET) -> None:
        self.budget = budget
        self.used = 0
        self._items: OrderedDict[Hashable, bytes] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: Hashable) -> bytes | None:
        with self._lock:
            data = self._items.get(key)
            if data is not None:
                self._items.move_to_end(key)
            return data

    def put(self, key: Hashable, data: bytes) -> None:
        if len(data) > self.budget:
            return
        with self._lock:
            old = self._items.pop(key, None)
            if old is not None:
                self.used -= len(old)
            self._items[key] = data
            self.used += len(data)
            while self.used > self.budget:
                _, dropped = self._items.popitem(last=False)
                self.used -= len(dropped)
