"""``vbmount serve``: one disk at one point in time as an NBD export.

In the foreground it serves until Ctrl-C or SIGTERM and then stops nbdkit;
with ``daemon`` it returns once nbdkit listens, and nbdkit's pid file is how
the user stops it (``kill $(cat PIDFILE)``).
"""

from __future__ import annotations

import os
import shutil
import signal
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

from vbbackup.chain import open_view
from vbbackup.errors import UsageError
from vbbackup.nbdio import proc
from vbbackup.nbdio.server import Export, NbdkitServer, Tls, plugin_args
from vbmount.resources import state_root


@dataclass(frozen=True)
class ServeConfig:
    directory: Path
    disk: str | None = None
    until: str | None = None
    socket: Path | None = None
    port: int | None = None
    listen: str | None = None
    export_name: str = ""
    tls: bool = False
    tls_certificates: Path | None = None
    tls_psk: Path | None = None
    writable: bool = False
    sequence: tuple[str, ...] | None = None
    daemon: bool = False
    pidfile: Path | None = None


def make_server(config: ServeConfig) -> NbdkitServer:
    """The server for `config`; checks the chain first so errors come as one clean line."""
    if config.socket is not None and config.port is not None:
        raise UsageError("give --socket or --port, not both")
    if config.sequence and config.until:
        raise UsageError("give --until or --sequence, not both")
    if config.pidfile is not None and not config.daemon:
        raise UsageError("--pidfile goes with --daemon")
    if config.port is None and (config.listen or config.tls):
        raise UsageError("--listen and --tls go with --port")
    if (config.tls_certificates or config.tls_psk) and not config.tls:
        raise UsageError("--tls-certificates and --tls-psk go with --tls")
    if config.tls and (config.tls_certificates is None) == (config.tls_psk is None):
        raise UsageError("--tls needs --tls-certificates DIR or --tls-psk FILE")
    for path in (config.tls_certificates, config.tls_psk):
        if path is not None and not path.exists():
            raise UsageError(f"{path} does not exist")
    tls = Tls(config.tls_certificates, config.tls_psk) if config.tls else None
    with open_view(config.directory, config.disk, config.until, config.sequence):
        pass
    workdir = state_root() / f"serve-{os.getpid()}"
    workdir.mkdir(mode=0o755, parents=True, exist_ok=True)
    socket = config.socket
    if socket is None and config.port is None:
        socket = workdir / "nbd.sock"
    plugin = plugin_args(Export(config.directory, config.disk, config.until, config.sequence))
    if config.daemon:  # nbdkit outlives us: it removes its private directory when it exits
        plugin.append(f"cleanup={workdir}")
    return NbdkitServer(
        plugin,
        workdir=workdir,
        socket=socket,
        port=config.port,
        writable=config.writable,
        pidfile=config.pidfile,
        tied=not config.daemon,
        listen=config.listen or "127.0.0.1",
        export_name=config.export_name,
        tls=tls,
    )


def serve(config: ServeConfig, announce: Callable[[str], None]) -> None:
    server = make_server(config)
    if config.daemon:
        server.start()
        server.detach()
        announce(server.uri)
        announce(f"pid file: {server.pidfile}")
        return
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        with server:
            announce(server.uri)
            announce("serving; Ctrl-C stops")
            if server.pid is not None:
                proc.wait_gone(server.pid, server.marker, timeout=float("inf"))
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)
        shutil.rmtree(server.pidfile.parent, ignore_errors=True)


def _raise_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt
