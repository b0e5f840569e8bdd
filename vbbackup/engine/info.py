"""``vbbackup info``: the chain of a backup set, each backup's sizes, and its problems.

Reads names and meta frames only (see ``survey``), so it answers at once
even for sets of many GiB; ``verify`` is the command that reads the bytes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vbbackup.chain import COPY, DIFF, FULL
from vbbackup.engine.survey import FileEntry, Survey, survey
from vbbackup.errors import VbError
from vbbackup.fsutil import sums_path
from vbbackup.virt import domainxml
from vbbackup.virt.agent import consistency_line


@dataclass(frozen=True)
class InfoConfig:
    directory: Path


def info(config: InfoConfig) -> dict[str, Any]:
    """The set as a JSON-ready dict (the ``--json`` output)."""
    found = survey(config.directory)
    return {
        "directory": str(found.directory),
        "domain": found.domain,
        "chain": _chain(found),
        "disks": {disk: [_backup(e) for e in entries] for disk, entries in found.disks.items()},
        "boot_files": _boot_files(found.directory),
        "problems": [str(p) for p in found.problems],
        "warnings": found.warnings,
    }


def _chain(found: Survey) -> list[dict[str, Any]]:
    """Points in order: checkpoints (full, incs), then differentials and copies."""
    points: dict[str, dict[str, Any]] = {}
    for name in found.checkpoints or ():
        points[name] = {"name": name, "level": None, "date": None, "parent": None}
    for entries in found.disks.values():
        for entry in entries:
            point = points.setdefault(
                entry.checkpoint,
                {"name": entry.checkpoint, "level": None, "date": None, "parent": None},
            )
            point["level"] = point["level"] or entry.data.level
            if entry.meta is not None:
                point["date"] = point["date"] or entry.meta.date
                if entry.data.level not in (COPY,):
                    point["parent"] = point["parent"] or entry.meta.parent_checkpoint
    names = list(points)
    fulls = [names.index(p["name"]) for p in points.values() if p["level"] == FULL]
    for point in list(points.values())[: min(fulls, default=0)]:
        if point["level"] is None:
            point["level"] = "merged"  # consolidated into the full that follows
    for point in points.values():
        point["consistency"] = _side_record(found.directory, "consistency", point["name"])
        point["domain_state"] = _side_record(found.directory, "domain", point["name"])
    return list(points.values())


def _side_record(directory: Path, kind: str, name: str) -> dict[str, Any] | None:
    """A JSON side file of a point: ``consistency`` (the guest's file systems) or ``domain``
    (autostart, guest OS, vTPMs); None when the backup did not record it."""
    ident = name[len("diff.") :] if name.startswith("diff.") else name
    try:
        record = json.loads((directory / f"{kind}.{ident}.json").read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def domain_state_line(state: dict[str, Any]) -> str:
    """One line of what the backup saw of the domain: its guest OS and autostart."""
    os_info = state.get("guest_os") or {}
    guest = " ".join(str(os_info[k]) for k in ("pretty-name",) if os_info.get(k)) or " ".join(
        str(os_info[k]) for k in ("name", "version") if os_info.get(k)
    )
    if os_info.get("kernel-release"):
        guest += f", kernel {os_info['kernel-release']}"
    parts = [f"guest: {guest or 'unknown (no guest agent)'}"]
    parts.append(f"autostart {'on' if state.get('autostart') else 'off'}")
    if state.get("vtpm_state"):
        parts.append(f"vTPM state saved ({state['vtpm_state']})")
    elif state.get("vtpm"):
        parts.append("vTPM state not saved")
    return "; ".join(parts)


def _boot_files(directory: Path) -> list[dict[str, str]]:
    """Kernel, initrd, loader and NVRAM files saved with the backups (``<name>.<ident>``)."""
    found: dict[str, dict[str, str]] = {}
    for xml in sorted(directory.glob("vmconfig.*.xml")):
        try:
            tree = domainxml.parse(xml)
        except VbError:
            continue
        for element, original in domainxml.boot_files(tree).items():
            base = Path(original).name
            for saved in [directory / base, *directory.glob(f"{base}.*")]:
                if saved.is_file() and not saved.name.endswith(".partial"):
                    found[saved.name] = {"kind": element, "file": saved.name, "source": original}
    return [found[name] for name in sorted(found)]


def _backup(entry: FileEntry) -> dict[str, Any]:
    meta = entry.meta
    return {
        "file": entry.path.name,
        "level": entry.data.level,
        "checkpoint": entry.checkpoint,
        "parent": meta.parent_checkpoint if meta else None,
        "date": meta.date if meta else None,
        "format": meta.disk_format if meta else None,
        "virtual_size": meta.virtual_size if meta else None,
        "data_size": meta.data_size if meta else None,
        "file_size": entry.file_size,
        "compression": _compression(entry),
        "checksum_file": entry.has_checksum,
        "sums_file": sums_path(entry.path).exists(),  # every read of it is checked
    }


def _compression(entry: FileEntry) -> str | None:
    meta = entry.meta
    if meta is None:
        return None
    if not meta.is_compressed:
        return "none"
    level = meta.compressed
    suffix = f" (level {level})" if isinstance(level, int) and not isinstance(level, bool) else ""
    return f"{meta.compression_method}{suffix}"


def human_size(n: int | None) -> str:
    if n is None:
        return "?"
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{n} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"


def render(report: dict[str, Any]) -> str:
    """The human-readable ``info`` output."""
    lines = [f"Backup set {report['directory']} (domain {report['domain'] or 'unknown'})", ""]
    lines.append("Chain:")
    for point in report["chain"]:
        parent = f"  (on {point['parent']})" if point["level"] == DIFF else ""
        level = point["level"] or "missing"
        lines.append(f"  {point['name']:<24} {level:<5} {point['date'] or '?'}{parent}")
        record = point.get("consistency")
        if record:  # sets made by virtnbdbackup record nothing
            lines.append(f"  {'':<24} {consistency_line(record)}")
        if point.get("domain_state"):
            lines.append(f"  {'':<24} {domain_state_line(point['domain_state'])}")
    header = ("file", "level", "virtual", "data", "file size", "compression", "chksum", "sums")
    for disk, backups in report["disks"].items():
        lines += ["", f"Disk {disk}:"]
        rows = [header] + [
            (
                b["file"],
                b["level"],
                human_size(b["virtual_size"]),
                human_size(b["data_size"]),
                human_size(b["file_size"]),
                b["compression"] or "?",
                "yes" if b["checksum_file"] else "no",
                "yes" if b["sums_file"] else "no",
            )
            for b in backups
        ]
        widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
        for row in rows:
            cells = (c.ljust(w) for c, w in zip(row, widths, strict=True))
            lines.append(("  " + "  ".join(cells)).rstrip())
    if report["boot_files"]:
        lines += ["", "Boot files:"]
        lines += [
            f"  {b['kind']:<7} {b['file']}  (from {b['source']})" for b in report["boot_files"]
        ]
    lines.append("")
    if report["problems"]:
        lines.append(f"Problems ({len(report['problems'])}):")
        lines += [f"  {p}" for p in report["problems"]]
    else:
        lines.append(
            "Problems: none found (names and metas only; `vbbackup verify` reads the data)"
        )
    lines += [f"Warning: {w}" for w in report["warnings"]]
    return "\n".join(lines)
