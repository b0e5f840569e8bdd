"""A crash at a chosen moment: the process "dies" at the N-th rename or removal.

    with dying_at(monkeypatch, 3):   # os.replace / os.rename / os.unlink / os.rmdir
        run_the_writer()              # raises Crash at the 4th such call, and at every later one

No cleanup code of ours gets to undo anything after the crash point (every
later rename or removal dies too), as after SIGKILL; what is on disk then is
what a killed process would leave.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest


class Crash(BaseException):
    """The process dies here."""


class _Dying:
    def __init__(self, step: int) -> None:
        self.step, self.calls, self.dead = step, 0, False

    def wrap(self, real: Callable[..., Any]) -> Callable[..., Any]:
        def call(*args: Any, **kwargs: Any) -> Any:
            if self.dead or self.calls == self.step:
                self.dead = True
                raise Crash
            self.calls += 1
            return real(*args, **kwargs)

        return call


@contextmanager
def dying_at(monkeypatch: pytest.MonkeyPatch, step: int) -> Iterator[None]:
    dying = _Dying(step)
    with monkeypatch.context() as patched:
        for name in ("replace", "rename", "unlink", "rmdir"):
            patched.setattr(os, name, dying.wrap(getattr(os, name)))
        yield
