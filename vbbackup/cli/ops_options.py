"""The backup commands' admin options (offline domains, freeze, estimate, broken chains)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from vbbackup.engine.backup_ops import BackupOptions

_OPTIONS = [
    click.option("--start-domain", is_flag=True,
                 help="Back up a shut-off domain: start it paused, shut it off again after."),
    click.option("--freeze-mountpoint", "freeze_mountpoints", multiple=True, metavar="PATH",
                 help="Freeze only this guest filesystem for the checkpoint (repeatable)."),
    click.option("--no-freeze", is_flag=True,
                 help="Do not freeze guest filesystems through the guest agent."),
    click.option("--pause", is_flag=True,
                 help="Suspend the domain while the backup job starts, resume it right after "
                      "(for guests without an agent); resumed on failure too."),
    click.option("--estimate", is_flag=True,
                 help="inc/diff: print the bytes changed since the checkpoint; write nothing."),
    click.option("--threshold", type=click.IntRange(0), metavar="BYTES",
                 help="inc/diff: skip the backup (exit 0) when fewer bytes changed."),
    click.option("--checkpointdir", type=click.Path(file_okay=False, path_type=Path),
                 help="Keep the checkpoint XML files here instead of DIR/checkpoints."),
    click.option("--no-fallback", is_flag=True,
                 help="Fail on a broken chain instead of a full backup into a new chain (DIR.1)."),
    click.option("--kill-jobs", is_flag=True,
                 help="Abort a block job left running on the domain (by a killed run)."),
    click.option("--nbd-host", metavar="ADDRESS",
                 help="Export the disks over TCP on this address of the domain's host "
                      "(needed with a remote -c qemu+ssh://...)."),
    click.option("--nbd-port", type=click.IntRange(1, 65535), default=10809, show_default=True,
                 help="TCP port of the export (with --nbd-host)."),
    click.option("--tls", is_flag=True,
                 help="Encrypt the TCP export with TLS (x509 certificates, as in qemu.conf)."),
    click.option("--tls-cert-dir", type=click.Path(file_okay=False, path_type=Path),
                 default=Path("/etc/pki/qemu"), show_default=True,
                 help="ca-cert.pem, client-cert.pem, client-key.pem for --tls."),
]  # fmt: skip


def ops_options(func: Callable[..., Any]) -> Callable[..., Any]:
    for option in reversed(_OPTIONS):
        func = option(func)
    return func


def backup_options(
    start_domain: bool = False,
    freeze_mountpoints: tuple[str, ...] = (),
    no_freeze: bool = False,
    estimate: bool = False,
    threshold: int | None = None,
    checkpointdir: Path | None = None,
    no_fallback: bool = False,
    kill_jobs: bool = False,
    nbd_host: str | None = None,
    nbd_port: int = 10809,
    tls: bool = False,
    tls_cert_dir: Path = Path("/etc/pki/qemu"),
    pause: bool = False,
) -> BackupOptions:
    return BackupOptions(
        start_domain=start_domain,
        freeze=not no_freeze,
        freeze_mountpoints=tuple(freeze_mountpoints),
        estimate=estimate,
        threshold=threshold,
        checkpoint_dir=checkpointdir,
        fallback=not no_fallback,
        kill_jobs=kill_jobs,
        nbd_host=nbd_host,
        nbd_port=nbd_port,
        tls=tls,
        tls_cert_dir=tls_cert_dir,
        pause=pause,
    )
