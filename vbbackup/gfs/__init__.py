"""The guest's file systems through libguestfs (an appliance VM, never the host kernel)."""

from vbbackup.gfs.appliance import OpenPoint, backend_settings, open_point

__all__ = ["OpenPoint", "backend_settings", "open_point"]
