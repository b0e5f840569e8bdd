"""The meta frame: JSON that describes one stream file."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

# virtnbdbackup's key names; very old streams used dashed names.
_KEYS = {
    "virtual_size": ("virtualSize", "virtual-size"),
    "data_size": ("dataSize", "data-size"),
    "date": ("date",),
    "disk_name": ("diskName",),
    "disk_format": ("diskFormat",),
    "checkpoint_name": ("checkpointName",),
    "parent_checkpoint": ("parentCheckpoint",),
    "incremental": ("incremental",),
    "compressed": ("compressed",),
    "compression_method": ("compressionMethod",),
    "stream_version": ("streamVersion", "stream-version"),
}


@dataclass(frozen=True)
class StreamMeta:
    """Metadata of one stream; field names map to virtnbdbackup's JSON keys.

    ``compressed`` is False or the lz4 level (virtnbdbackup writes the level,
    and treats anything but ``False`` as compressed); ``parent_checkpoint``
    is None for a full or copy backup.
    """

    virtual_size: int
    data_size: int
    date: str
    disk_name: str
    disk_format: str
    checkpoint_name: str
    parent_checkpoint: str | None
    incremental: bool
    compressed: int | bool = False
    compression_method: str = "lz4"
    stream_version: int = 2

    @property
    def is_compressed(self) -> bool:
        return bool(self.compressed) and self.stream_version >= 2

    def to_dict(self) -> dict[str, Any]:
        return {
            "virtualSize": self.virtual_size,
            "dataSize": self.data_size,
            "date": self.date,
            "diskName": self.disk_name,
            "diskFormat": self.disk_format,
            "checkpointName": self.checkpoint_name,
            "compressed": self.compressed if self.compressed else False,
            "compressionMethod": self.compression_method,
            "parentCheckpoint": self.parent_checkpoint or False,
            "incremental": self.incremental,
            "streamVersion": self.stream_version,
        }

    def to_json(self) -> bytes:
        """Pretty-printed like virtnbdbackup's (indent 4)."""
        return json.dumps(self.to_dict(), indent=4).encode("utf-8")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> StreamMeta:
        """Build from a meta JSON object; raises KeyError/TypeError/ValueError."""
        values: dict[str, Any] = {}
        for field, names in _KEYS.items():
            for name in names:
                if name in data:
                    values[field] = data[name]
                    break
        for required in ("virtual_size", "data_size"):
            if required not in values:
                raise KeyError(_KEYS[required][0])
        values["virtual_size"] = _nonneg_int(values["virtual_size"], "virtualSize")
        values["data_size"] = _nonneg_int(values["data_size"], "dataSize")
        values.setdefault("date", "")
        values.setdefault("disk_name", "")
        values.setdefault("disk_format", "")
        values.setdefault("checkpoint_name", "")
        values["parent_checkpoint"] = values.get("parent_checkpoint") or None
        values["incremental"] = bool(values.get("incremental", False))
        compressed = values.get("compressed", False)
        values["compressed"] = compressed if compressed not in (None, False) else False
        values.setdefault("compression_method", "lz4")
        values["stream_version"] = int(values.get("stream_version", 1))
        for text in ("date", "disk_name", "disk_format", "checkpoint_name"):
            if not isinstance(values[text], str):
                raise TypeError(f"{text} is not a string")
        return cls(**values)


def _nonneg_int(value: Any, key: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{key} is not a non-negative integer: {value!r}")
    return value
