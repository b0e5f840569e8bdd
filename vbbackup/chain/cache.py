"""A small LRU of decoded lz4 frames, bounded in bytes, shared by threads."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable

DEFAULT_BUDGET = 64 * 1024 * 1024


class DecodedCache:
    """Keeps recently decoded pieces so nearby reads decode a frame once.

    Bounded in bytes rather than entries because an lz4 frame of a stream
    may decode to anything up to 32 MiB. Concurrent misses on one key
    decode it once: a sequential reader (nbdcopy) sends many requests
    inside the same lz4 frame at the same time.
    """

    def __init__(self, budget: int = DEFAULT_BUDGET) -> None:
        self.budget = budget
        self.used = 0
        self.loads = 0
        self._items: OrderedDict[Hashable, bytes] = OrderedDict()
        self._loading: dict[Hashable, threading.Event] = {}
        self._lock = threading.Lock()

    def get(self, key: Hashable, load: Callable[[], bytes]) -> bytes:
        """The cached value, or ``load()``'s result (run by one thread only)."""
        with self._lock:
            data = self._items.get(key)
            if data is not None:
                self._items.move_to_end(key)
                return data
            pending = self._loading.get(key)
            if pending is None:
                pending = self._loading[key] = threading.Event()
                owner = True
            else:
                owner = False
        if not owner:
            pending.wait()
            with self._lock:
                data = self._items.get(key)
            return data if data is not None else load()  # the owner failed, or no room
        try:
            data = load()
            self._put(key, data)
            return data
        finally:
            with self._lock:
                del self._loading[key]
            pending.set()

    def _put(self, key: Hashable, data: bytes) -> None:
        with self._lock:
            self.loads += 1
            if len(data) > self.budget:
                return
            old = self._items.pop(key, None)
            if old is not None:
                self.used -= len(old)
            self._items[key] = data
            self.used += len(data)
            while self.used > self.budget:
                _, dropped = self._items.popitem(last=False)
                self.used -= len(dropped)
