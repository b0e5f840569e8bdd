"""The decoded-frame cache: bounded in bytes, one decode per concurrent miss."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from vbbackup.chain.cache import DecodedCache


def test_budget_evicts_least_recently_used() -> None:
    cache = DecodedCache(budget=10)
    cache.get("a", lambda: b"aaaa")
    cache.get("b", lambda: b"bbbb")
    cache.get("a", lambda: b"never")  # a is now the newest
    cache.get("c", lambda: b"cccc")  # 12 bytes > 10: b goes
    assert cache.used == 8
    assert cache.get("a", lambda: b"reloaded") == b"aaaa"
    assert cache.get("b", lambda: b"reloaded") == b"reloaded"


def test_too_big_values_pass_through() -> None:
    cache = DecodedCache(budget=3)
    assert cache.get("k", lambda: b"long value") == b"long value"
    assert cache.used == 0


def test_concurrent_misses_load_once() -> None:
    cache = DecodedCache()
    started = threading.Event()
    release = threading.Event()
    calls = []

    def slow_load() -> bytes:
        calls.append(1)
        started.set()
        release.wait(5)
        return b"decoded"

    with ThreadPoolExecutor(8) as pool:
        futures = [pool.submit(cache.get, "k", slow_load) for _ in range(8)]
        started.wait(5)
        release.set()
        assert [f.result() for f in futures] == [b"decoded"] * 8
    assert len(calls) == 1


def test_a_failed_load_lets_waiters_retry() -> None:
    cache = DecodedCache()

    def broken() -> bytes:
        raise OSError("disk gone")

    with pytest.raises(OSError, match="disk gone"):
        cache.get("k", broken)
    assert cache.get("k", lambda: b"ok") == b"ok"
