"""vbbackup: online backup and instant recovery for libvirt/KVM virtual machines."""

import logging

__version__ = "0.1.0"

# a library's logger: records go to the handlers a command adds (the run log, -v, --syslog),
# never to logging's last-resort stderr printer (warnings are already said on stderr)
logging.getLogger("vbbackup").addHandler(logging.NullHandler())
