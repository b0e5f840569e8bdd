"""The state of a domain's swtpm vTPM: saved beside a backup, put back for a restored domain.

libvirt keeps an emulated TPM's state (its keys, NV indexes, PCR banks' config) in
``/var/lib/libvirt/swtpm/<uuid>/`` (``qemu:///system``) or
``$XDG_CONFIG_HOME/libvirt/qemu/swtpm/<uuid>/`` (``qemu:///session``), outside every disk.
A guest that seals a key in it (BitLocker, LUKS bound to the TPM) does not boot from a
restore without it. swtpm replaces its state file by a rename, so a copy taken while the
domain runs holds one whole state. The backup keeps it as ``tpm.<ident>.tar``; restore
``--define`` puts it under the new domain's UUID before the domain first starts (libvirt
then uses it instead of manufacturing a new TPM).
"""

from __future__ import annotations

import os
import pwd
import tarfile
from pathlib import Path

from vbbackup.errors import TargetExistsError, VbError
from vbbackup.fsutil import atomic_output

SYSTEM_DIR = Path("/var/lib/libvirt/swtpm")


def state_dir(uuid: str, uri: str) -> Path | None:
    """Where libvirt on this host keeps the vTPM state of domain ``uuid`` (None: a remote
    or unknown hypervisor, whose files we cannot reach)."""
    if uri.startswith(("qemu:///system", "qemu+unix:///system")):
        return SYSTEM_DIR / uuid
    if uri.startswith(("qemu:///session", "qemu+unix:///session")):
        config = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
        return Path(config) / "libvirt" / "qemu" / "swtpm" / uuid
    return None


def save(source: Path, archive: Path) -> bool:
    """Write the state directory ``source`` as the tar ``archive``; False if it has none."""
    try:
        entries = sorted(p for p in source.rglob("*") if p.is_file() or p.is_dir())
    except OSError:
        return False
    if not any(p.is_file() for p in entries):
        return False
    with atomic_output(archive) as out, tarfile.open(fileobj=out, mode="w") as tar:
        for path in entries:
            try:
                tar.add(path, arcname=str(path.relative_to(source)), recursive=False)
            except OSError as err:
                raise VbError(f"cannot save the vTPM state {path}: {err.strerror}") from None
    return True


def put_back(archive: Path, target: Path) -> None:
    """Extract a saved state into ``target`` (which must not hold one), owned by the user
    libvirt runs swtpm as (``tss``, root when there is none, as libvirt chooses)."""
    if target.exists() and any(target.iterdir()):
        raise TargetExistsError(f"{target} holds a vTPM state already; refusing to replace it")
    owner = _swtpm_owner() if target.is_relative_to(SYSTEM_DIR) else (os.getuid(), os.getgid())
    try:
        target.mkdir(mode=0o700, parents=True, exist_ok=True)
        with tarfile.open(archive) as tar:
            for member in tar:
                parts = Path(member.name).parts
                if member.name.startswith("/") or ".." in parts or not parts:
                    raise VbError(f"{archive} names {member.name!r}: not a vTPM state")
                where = target.joinpath(*parts)
                if member.isdir():
                    where.mkdir(mode=0o700, exist_ok=True)
                elif member.isfile():
                    source = tar.extractfile(member)
                    assert source is not None
                    with source, open(where, "xb") as out:
                        out.write(source.read())
                    where.chmod(0o600)
                else:
                    raise VbError(f"{archive} holds {member.name!r}, not a file: not a vTPM state")
        for path in [target, *target.rglob("*")]:
            os.chown(path, *owner)
    except (OSError, tarfile.TarError) as err:
        raise VbError(f"cannot put the vTPM state {archive} into {target}: {err}") from None


def _swtpm_owner() -> tuple[int, int]:
    try:
        entry = pwd.getpwnam("tss")
    except KeyError:
        return 0, 0
    return entry.pw_uid, entry.pw_gid
