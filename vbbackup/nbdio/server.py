"""nbdkit serving one point in time of a backup set, on a unix socket or a TCP port.

    with NbdkitServer(plugin_args(export), socket=Path("/run/x/vda.sock"),
                      workdir=Path("/run/x")) as server:
        server.uri     # nbd+unix:///?socket=/run/x/vda.sock

``NbdkitServer`` takes any nbdkit plugin and arguments, filters first (tests serve plain images
with ``["file", "disk.raw"]``). nbdkit forks into the background by itself once
it listens (startup errors go to a log file) and is ready when its pid file
exists. ``detach()`` leaves it running after we
exit; ``stop_server`` ends it later from another process. A ``tied`` server is
our child instead and dies with us, even on SIGKILL (``vbmount serve`` in the
foreground).
"""

from __future__ import annotations

import contextlib
import os
import pwd
import sys
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import nbdkit_plugin
from vbbackup.errors import MountError, UsageError, VbError
from vbbackup.nbdio import proc

# The plugin is installed with the package (nbdkit loads it by path); VBMOUNT_PLUGIN
# points restore, vbmount and tests at another copy of it.
PLUGIN = Path(nbdkit_plugin.__file__).resolve().parent / "vbmount.py"
QEMU_USERS = ("libvirt-qemu", "qemu")  # Debian's, Fedora's


# Threads per connection. Every request of the Python plugin holds the GIL for a moment; with
# nbdkit's default of 16 per connection, 4 connections made 64 threads queue for it: random
# 4 KiB reads ran 20-25% slower than with 4 (bench/plugin.py, docs/performance.md). 4 still
# lets both cores decode lz4 pieces for one client with requests in flight.
THREADS = 4


@dataclass(frozen=True)
class Tls:
    """TLS for a TCP export, as nbdkit offers it: X.509 certificates (a directory with
    ca-cert.pem, server-cert.pem, server-key.pem) or a PSK file (``user:hexkey`` lines)."""

    certificates: Path | None = None
    psk: Path | None = None


@dataclass(frozen=True)
class Export:
    """One disk of a backup directory at one point in time (None: the newest)."""

    directory: Path
    disk: str | None = None
    until: str | None = None
    files: tuple[str, ...] | None = None  # an explicit sequence (virtnbdrestore's -s)


def plugin_args(export: Export) -> list[str]:
    """nbdkit arguments that load our plugin for `export` (VBMOUNT_PLUGIN overrides the path)."""
    plugin = Path(os.environ.get("VBMOUNT_PLUGIN", PLUGIN))
    if not plugin.is_file():
        raise VbError(f"nbdkit plugin not found: {plugin}")
    args = ["python", str(plugin), f"dir={Path(export.directory).resolve()}"]
    if export.disk is not None:
        args.append(f"disk={export.disk}")
    if export.until is not None:
        args.append(f"until={export.until}")
    if export.files is not None:
        args.append(f"file={','.join(export.files)}")
    return args


class NbdkitServer:
    """One nbdkit process; start/stop or a context manager (which always stops it)."""

    def __init__(
        self,
        plugin: list[str],
        *,
        workdir: Path,
        socket: Path | None = None,
        port: int | None = None,
        writable: bool = False,
        name: str = "nbdkit",
        pidfile: Path | None = None,
        tied: bool = False,
        listen: str = "127.0.0.1",
        export_name: str = "",
        tls: Tls | None = None,
    ) -> None:
        if (socket is None) == (port is None):
            raise UsageError("serve on either a unix socket or a TCP port")
        if tls is not None and port is None:
            raise UsageError("TLS is for a TCP export (--port); a unix socket is local")
        if tls is not None and (tls.certificates is None) == (tls.psk is None):
            raise UsageError("TLS needs either certificates or a PSK file")
        self.plugin = plugin
        self.socket = socket.resolve() if socket is not None else None
        self.port = port
        self.writable = writable
        self.pidfile = (pidfile or workdir / f"{name}.pid").resolve()
        self.log = workdir / f"{name}.log"
        self.tied = tied
        self.listen = listen
        self.export_name = export_name
        self.tls = tls
        self.pid: int | None = None
        self._detached = False

    @property
    def uri(self) -> str:
        """The export's NBD URI (for a TLS export, what a client adds is its own part)."""
        if self.socket is not None:
            return unix_uri(self.socket, self.export_name)
        host = f"[{self.listen}]" if ":" in self.listen else self.listen
        if host in ("0.0.0.0", "[::]"):
            host = "localhost"
        scheme = "nbds" if self.tls is not None else "nbd"
        return f"{scheme}://{host}:{self.port}/{self.export_name}"

    @property
    def marker(self) -> str:
        """A string of nbdkit's command line that identifies this server."""
        return str(self.socket) if self.socket is not None else f"--port={self.port}"

    def command(self) -> list[str]:
        argv = ["nbdkit", "--pidfile", str(self.pidfile), f"--threads={THREADS}"]
        if self.tied:
            argv += ["--foreground", "--exit-with-parent"]
        if self.socket is not None:
            argv += ["--unix", str(self.socket)]
        else:
            argv += [f"--port={self.port}", f"--ipaddr={self.listen}"]
        if self.tls is not None:
            argv.append("--tls=require")
            if self.tls.certificates is not None:
                argv.append(f"--tls-certificates={self.tls.certificates}")
            if self.tls.psk is not None:
                argv.append(f"--tls-psk={self.tls.psk}")
        # cow: writes land in a throwaway overlay; the backup files are never opened for writing.
        argv += ["--filter=cow"] if self.writable else ["--readonly"]
        if not self.export_name:
            return argv + self.plugin
        # listed under its name, served under it (and as the default ""), no other name
        name = self.export_name
        return [*argv, "--filter=exportname", *self.plugin, f"exportname={name}",
                f"default-export={name}", "exportname-list=explicit",
                "exportname-strict=true"]  # fmt: skip

    def start(self) -> NbdkitServer:
        if self.socket is not None and self.socket.exists():
            raise MountError(f"socket {self.socket} already exists (another server?)")
        start = proc.spawn_daemon if self.tied else proc.start_forking_daemon
        self.pid = start(self.command(), pidfile=self.pidfile, log=self.log, env=plugin_env())
        return self

    def detach(self) -> None:
        """Leave the server running when this object goes away (stop_server ends it)."""
        self._detached = True

    def stop(self) -> None:
        if self.pid is not None:
            stop_server(self.pid, self.marker, self.socket)
            self.pid = None

    def __enter__(self) -> NbdkitServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if not self._detached or exc_type is not None:
            self.stop()


def unix_uri(socket: Path | str, export_name: str = "") -> str:
    """The NBD URI of an export on a unix socket (what QEMU and libnbd are given)."""
    return f"nbd+unix:///{export_name}?socket={socket}"


def plugin_env() -> dict[str, str]:
    """Our environment, with nbdkit's embedded Python pinned to the Python we run on.

    An embedded Python finds its standard library from the first ``python3`` on PATH; with
    a pyenv or conda ``python3`` there it loaded that Python's library, found no lz4 and
    the plugin failed to load ("error running this script"). The plugin imports vbbackup
    from our environment, so the Python nbdkit embeds must be ours anyway.
    """
    env = dict(os.environ)
    env.setdefault("PYTHONHOME", sys.base_prefix)
    return env


def stop_server(pid: int, marker: str, socket: Path | None = None) -> None:
    """End an nbdkit we started (maybe in an earlier process); harmless if gone."""
    proc.terminate(pid, marker)
    if socket is not None:
        socket.unlink(missing_ok=True)


def qemu_owner() -> tuple[int, int] | None:
    """uid and gid of the user QEMU runs as under qemu:///system (None: no such user)."""
    for user in QEMU_USERS:
        with contextlib.suppress(KeyError):
            entry = pwd.getpwnam(user)
            return entry.pw_uid, entry.pw_gid
    return None


def give_socket_to_qemu(socket: Path) -> None:
    """Only QEMU may connect: the socket owned by its user, 0600 (0666 without one)."""
    owner = qemu_owner()
    if owner is not None:
        os.chown(socket, *owner)
    os.chmod(socket, 0o600 if owner is not None else 0o666)
