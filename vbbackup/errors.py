"""One exception hierarchy for everything a user can be told about.

Each class carries the process exit code; the CLIs turn a ``VbError`` into a
single stderr line and that code in one place (see ``vbbackup.cli``).
"""

from __future__ import annotations


class VbError(Exception):
    """Base of every error with a message a user can act on."""

    exit_code = 1

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class UsageError(VbError):
    """Bad arguments or options (the user can fix the command line)."""

    exit_code = 2


class StreamFormatError(VbError):
    """A ``*.data`` stream file is malformed, truncated or corrupt."""

    exit_code = 3

    def __init__(self, path: str, position: int, message: str) -> None:
        super().__init__(f"{path}: at byte {position}: {message}")
        self.path = path
        self.position = position
        self.detail = message


class ChainError(VbError):
    """A backup set cannot be resolved into a point in time."""

    exit_code = 4


class TargetExistsError(VbError):
    """Refusing to overwrite a backup or restore target."""

    exit_code = 5


class LibvirtError(VbError):
    """libvirt or QEMU refused an operation."""

    exit_code = 6


class NbdError(VbError):
    """The NBD export could not be reached or read."""

    exit_code = 7


class BackupBusyError(VbError):
    """Another backup of the same domain is running."""

    exit_code = 8


class VerifyError(VbError):
    """``vbbackup verify`` found damage."""

    exit_code = 9


class MountError(VbError):
    """Serving, mounting or booting a backup failed."""

    exit_code = 10


class BackupInterrupted(VbError):
    """SIGTERM/SIGHUP during a backup: the job was ended, nothing half-written kept."""

    exit_code = 130
