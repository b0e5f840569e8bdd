"""libvirt side of a backup: domain and disk inspection, checkpoints, the pull job."""

from vbbackup.virt.checkpoints import CHECKPOINT_PREFIX, Checkpoints, checkpoint_index
from vbbackup.virt.connection import libvirt_connection, lookup_domain
from vbbackup.virt.domainxml import DomainDisk, domain_disks
from vbbackup.virt.imageinfo import image_info
from vbbackup.virt.job import BackupJob, JobDisk

__all__ = [
    "CHECKPOINT_PREFIX",
    "BackupJob",
    "Checkpoints",
    "DomainDisk",
    "JobDisk",
    "checkpoint_index",
    "domain_disks",
    "image_info",
    "libvirt_connection",
    "lookup_domain",
]
