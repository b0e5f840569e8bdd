"""nbdkit plugin serving one point in time of a vbbackup/virtnbdbackup set.

    nbdkit python nbdkit_plugin/vbmount.py dir=DIR [disk=vda] [until=CHECKPOINT]
    nbdkit python nbdkit_plugin/vbmount.py dir=DIR file=vda.full.data,vda.inc.X.data
    ... cleanup=DIR    (vbmount serve --daemon: a directory removed when nbdkit exits)

Read-only: the export says so, and nbdkit refuses writes (EPERM, as the NBD
protocol has it); add ``--filter=cow`` for a writable view. All the work is
in ``vbbackup.chain``, opened once in ``get_ready``, shared by every
connection and thread.
"""

from __future__ import annotations

import errno
import os
import shutil
import site
import sys

import nbdkit

# nbdkit embeds /usr/bin/python3: make our packages importable from where this
# file is, a checkout (and its .venv) or the site-packages it was installed into.
_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)
    if os.path.basename(_ROOT) == "site-packages":
        site.addsitedir(_ROOT)  # its .pth files too
_VENV = f"{_ROOT}/.venv/lib/python{sys.version_info[0]}.{sys.version_info[1]}/site-packages"
if os.path.isdir(_VENV):
    site.addsitedir(_VENV)

from nbdkit_plugin.sectors import whole_sectors  # noqa: E402
from vbbackup.chain import PointInTimeView, open_view  # noqa: E402
from vbbackup.errors import VbError  # noqa: E402

API_VERSION = 2
_KEYS = ("dir", "disk", "until", "file", "cleanup")
_params: dict[str, str] = {}
_view: PointInTimeView | None = None


class ConfigError(VbError):
    """Bad plugin parameters."""


def _fail(err: VbError) -> VbError:
    """Make nbdkit print one line (its traceback printer honours tracebacklimit)."""
    sys.tracebacklimit = 0
    return err


def config(key: str, value: str) -> None:
    if key not in _KEYS:
        raise _fail(ConfigError(f"unknown parameter {key!r} (known: {', '.join(_KEYS)})"))
    _params[key] = value


def config_complete() -> None:
    if "dir" not in _params:
        raise _fail(ConfigError("missing parameter dir=BACKUP_DIRECTORY"))


def thread_model() -> int:
    return nbdkit.THREAD_MODEL_PARALLEL


def get_ready() -> None:
    global _view
    files = _params["file"].split(",") if "file" in _params else None
    try:
        _view = open_view(_params["dir"], _params.get("disk"), _params.get("until"), files)
    except VbError as err:
        raise _fail(err) from None
    warning = _view.unchecked_warning()
    if warning:
        print(f"vbmount: {warning}", file=sys.stderr, flush=True)


def cleanup() -> None:
    """At nbdkit's exit; cleanup=DIR: the server's private directory goes with it."""
    if _view is not None:
        _view.close()
    if "cleanup" in _params:
        shutil.rmtree(_params["cleanup"], ignore_errors=True)


def open(readonly: bool) -> PointInTimeView:  # noqa: A001 - nbdkit's hook name
    if _view is None:
        raise ConfigError("no view: get_ready did not run")
    return _view


def get_size(h: PointInTimeView) -> int:
    return h.size


def can_write(h: PointInTimeView) -> bool:
    return False


def can_multi_conn(h: PointInTimeView) -> bool:
    return True


def can_cache(h: PointInTimeView) -> int:
    return nbdkit.CACHE_EMULATE


def can_extents(h: PointInTimeView) -> bool:
    return True


def pread(h: PointInTimeView, buf: memoryview, offset: int, flags: int) -> None:
    try:
        h.readinto(buf, offset)
    except VbError as err:  # damaged data: the client gets EIO, never wrong bytes
        print(f"vbmount: error: {err}", file=sys.stderr, flush=True)
        nbdkit.set_error(errno.EIO)
        raise _fail(err) from None


def extents(h: PointInTimeView, count: int, offset: int, flags: int) -> list[tuple[int, int, int]]:
    limit = 1 if flags & nbdkit.FLAG_REQ_ONE else 4096
    runs = h.extents(offset, min(count, h.size - offset), limit)
    zero = nbdkit.EXTENT_HOLE | nbdkit.EXTENT_ZERO
    return [(off, n, zero if z else 0) for off, n, z in whole_sectors(offset, runs)]
