"""vbbackup: online backup and instant recovery for libvirt/KVM virtual machines."""

__version__ = "0.1.0"
