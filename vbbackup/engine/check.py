"""``vbbackup check``: libvirt's checkpoints, the images' bitmaps and the set's chain.

Read-only. Three views of the same history are gathered and laid side by
side; every disagreement becomes a finding with the command that fixes it::

    checkpoint        libvirt  vda      backup set
    virtnbdbackup.0   yes      bitmap   full
    virtnbdbackup.1   -        bitmap   inc        <- libvirt lost it: redefine

Bitmaps come from ``qemu-img info -U`` (what the image file holds) and, on
a running domain, also from QEMU (``query-block``): a bitmap created after
QEMU started is written to the file only when QEMU closes the image.
"""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import libvirt
import libvirt_qemu
from lxml import etree

from vbbackup.chain.backupset import BackupSet, start_at_full
from vbbackup.errors import ChainError, VbError
from vbbackup.virt.checkpoints import chain_of, identity_mismatch
from vbbackup.virt.connection import libvirt_connection, lookup_domain
from vbbackup.virt.remote import on_host, ssh_prefix


@dataclass(frozen=True)
class CheckConfig:
    domain: str
    directory: Path | None = None
    uri: str = "qemu:///system"


@dataclass(frozen=True)
class Finding:
    problem: str
    fix: str


@dataclass(frozen=True)
class Bitmap:
    name: str
    flags: tuple[str, ...] = ()
    inconsistent: bool = False

    @property
    def broken(self) -> bool:
        return self.inconsistent


@dataclass
class DomainState:
    """What libvirt and the images say (gathered first, judged by ``findings``)."""

    name: str
    running: bool
    images: dict[str, Path]  # qcow2 disks: target -> image
    checkpoints: dict[str, dict[str, str]]  # name -> {target: bitmap name}
    order: list[str]  # checkpoint names, oldest first
    bitmaps: dict[str, dict[str, Bitmap]]  # target -> name -> bitmap
    job_active: bool = False
    xml: dict[str, str] = field(default_factory=dict)  # checkpoint name -> libvirt's XML


@dataclass
class SetState:
    """What the backup directory says."""

    directory: Path
    chain: list[str]  # checkpoint names from the full's on
    levels: dict[str, str]  # checkpoint -> "full"/"inc"
    saved_xml: set[str]  # names with checkpoints/<name>.xml
    problem: str = ""  # the chain does not resolve


@dataclass
class CheckReport:
    domain: DomainState
    backup: SetState | None
    findings: list[Finding] = field(default_factory=list)


def check(config: CheckConfig) -> CheckReport:
    """Gather the three views and judge them; changes nothing anywhere."""
    domain = gather_domain(config.domain, config.uri)
    backup = gather_set(config.directory) if config.directory else None
    return CheckReport(domain, backup, findings(domain, backup))


def gather_domain(name: str, uri: str) -> DomainState:
    with libvirt_connection(uri) as conn:
        dom = lookup_domain(conn, name)
        running = bool(dom.isActive())
        images = _qcow2_images(dom.XMLDesc(0))
        checkpoints: dict[str, dict[str, str]] = {}
        parents: dict[str, str | None] = {}
        xmls: dict[str, str] = {}
        for cp in dom.listAllCheckpoints():
            text = cp.getXMLDesc(libvirt.VIR_DOMAIN_CHECKPOINT_XML_NO_DOMAIN)
            root = etree.fromstring(text)
            cp_name = root.findtext("name") or ""
            xmls[cp_name] = text
            parents[cp_name] = root.findtext("parent/name")
            checkpoints[cp_name] = {
                str(d.get("name")): d.get("bitmap") or cp_name
                for d in root.iterfind("disks/disk")
                if d.get("checkpoint") == "bitmap"
            }
        ssh = ssh_prefix(uri)
        bitmaps = {target: _image_bitmaps(path, ssh) for target, path in images.items()}
        if running:
            for target, live in _live_bitmaps(dom, images).items():
                bitmaps[target].update(live)
        job = running and dom.jobInfo()[0] != libvirt.VIR_DOMAIN_JOB_NONE
        order = _order(parents)
        return DomainState(name, running, images, checkpoints, order, bitmaps, job, xmls)


def _order(parents: dict[str, str | None]) -> list[str]:
    """Checkpoint names, parents before children."""
    out: list[str] = []
    pending = dict(parents)
    while pending:
        ready = sorted(n for n, p in pending.items() if p is None or p in out or p not in parents)
        if not ready:  # a cycle cannot happen in libvirt; keep the rest anyway
            ready = sorted(pending)
        for name in ready:
            out.append(name)
            del pending[name]
    return out


def _qcow2_images(xml: str) -> dict[str, Path]:
    root = etree.fromstring(xml)
    images = {}
    for disk in root.iterfind("devices/disk"):
        source = disk.find("source")
        target = disk.find("target")
        driver = disk.find("driver")
        if disk.get("device", "disk") != "disk" or source is None or target is None:
            continue
        if driver is None or driver.get("type") != "qcow2" or not source.get("file"):
            continue
        images[str(target.get("dev"))] = Path(str(source.get("file")))
    return images


def _image_bitmaps(image: Path, ssh: list[str]) -> dict[str, Bitmap]:
    """Persistent bitmaps in the image file (``-U``: the domain may have it open)."""
    done = subprocess.run(
        on_host(ssh, ["qemu-img", "info", "-U", "--output=json", str(image)]),
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise VbError(f"qemu-img info {image} failed: {done.stderr.strip()}")
    data = json.loads(done.stdout).get("format-specific", {}).get("data", {})
    return {
        b["name"]: Bitmap(b["name"], tuple(b.get("flags", ()))) for b in data.get("bitmaps", [])
    }


def _live_bitmaps(dom: libvirt.virDomain, images: dict[str, Path]) -> dict[str, dict[str, Bitmap]]:
    """Bitmaps QEMU holds for each image (``query-block``)."""
    reply = libvirt_qemu.qemuMonitorCommand(dom, '{"execute": "query-block"}', 0)
    by_file = {str(path): target for target, path in images.items()}
    out: dict[str, dict[str, Bitmap]] = {}
    for device in json.loads(reply).get("return", []):
        inserted = device.get("inserted") or {}
        target = by_file.get(inserted.get("file", ""))
        if target is None:
            continue
        out[target] = {
            b["name"]: Bitmap(b["name"], ("live",), bool(b.get("inconsistent")))
            for b in inserted.get("dirty-bitmaps", [])
            if b.get("persistent", True)
        }
    return out


def gather_set(directory: Path) -> SetState:
    backup = SetState(directory, [], {}, set())
    backup.saved_xml = {p.stem for p in (directory / "checkpoints").glob("*.xml")}
    try:
        backup_set = BackupSet(directory)
        names = list(backup_set.checkpoints or ())
        for disk in backup_set.disks:
            fulls = [f for f in backup_set.files(disk) if f.level == "full"]
            full = backup_set.meta(fulls[0]) if fulls else None
            backup.chain = start_at_full(names, full)
            backup_set.resolve(disk)  # raises when a file of the chain is missing
    except ChainError as err:
        backup.problem = str(err)
    for k, name in enumerate(backup.chain):
        backup.levels[name] = "full" if k == 0 else "inc"
    return backup


def findings(domain: DomainState, backup: SetState | None) -> list[Finding]:
    """Every inconsistency between the views, each with the command that fixes it."""
    out: list[Finding] = []
    dom = domain.name
    new_full = f"vbbackup full {dom} -o NEW_DIR"
    if domain.job_active:
        out.append(
            Finding(
                f"a block job is running on {dom} (a backup left by a killed run?)",
                f"vbbackup inc {dom} -o DIR --kill-jobs, or: virsh domjobabort {dom}",
            )
        )
    for cp in domain.order:
        for target, bitmap in domain.checkpoints[cp].items():
            if target not in domain.images:
                continue
            found = domain.bitmaps[target].get(bitmap)
            image = domain.images[target]
            if found is None:
                out.append(
                    Finding(
                        f"checkpoint {cp}: disk {target} ({image}) has no bitmap {bitmap!r}; "
                        "no incremental backup can be read from it",
                        f"virsh checkpoint-delete {dom} {cp} --metadata, then {new_full}",
                    )
                )
            elif found.broken or ("in-use" in found.flags and not domain.running):
                out.append(
                    Finding(
                        f"checkpoint {cp}: bitmap {bitmap!r} of disk {target} is inconsistent "
                        "(QEMU did not close the image cleanly)",
                        f"qemu-img bitmap --remove {image} {bitmap} (domain shut off), "
                        f"virsh checkpoint-delete {dom} {cp} --metadata, then {new_full}",
                    )
                )
    owned = {(t, b) for disks in domain.checkpoints.values() for t, b in disks.items()}
    for target, bitmaps in domain.bitmaps.items():
        for name in sorted(bitmaps):
            if (target, name) in owned:
                continue
            if backup and name in backup.chain and name in backup.saved_xml:
                continue  # reported below as a lost checkpoint, fixed by redefining
            out.append(
                Finding(
                    f"disk {target} ({domain.images[target]}) holds bitmap {name!r} "
                    f"that no checkpoint of {dom} owns",
                    f"qemu-img bitmap --remove {domain.images[target]} {name} "
                    "(with the domain shut off)",
                )
            )
    if backup is not None:
        out += _set_findings(domain, backup, new_full)
    return out


def _set_findings(domain: DomainState, backup: SetState, new_full: str) -> list[Finding]:
    out: list[Finding] = []
    dom = domain.name
    if backup.problem:
        out.append(Finding(f"backup set: {backup.problem}", new_full))
    for cp in backup.chain:
        if cp in domain.checkpoints:
            saved = backup.directory / "checkpoints" / f"{cp}.xml"
            mismatch = (
                identity_mismatch(cp, saved.read_text(), domain.xml[cp])
                if cp in backup.saved_xml and cp in domain.xml
                else None
            )
            if mismatch:
                out.append(Finding(f"{mismatch}: the set's chain cannot go on", new_full))
            continue
        xml = backup.directory / "checkpoints" / f"{cp}.xml"
        if cp in backup.saved_xml:
            fix = (
                f"vbbackup inc {dom} -o {backup.directory} redefines it, or: "
                f"virsh checkpoint-create {dom} {xml} --redefine"
            )
        else:
            fix = f"{new_full} ({xml} is missing, it cannot be redefined)"
        out.append(Finding(f"checkpoint {cp} of the backup set is unknown to libvirt", fix))
    if backup.chain and domain.order:
        last = backup.chain[-1]
        mine = [n for n in domain.order if chain_of(n) == chain_of(last)]
        later = mine[mine.index(last) + 1 :] if last in mine else []
        if later:
            out.append(
                Finding(
                    f"libvirt has checkpoints newer than the set's last ({backup.chain[-1]}): "
                    f"{', '.join(later)}; another backup tool or set uses {dom}",
                    f"{new_full} (one tool and one chain per domain)",
                )
            )
    return out


def render(report: CheckReport) -> list[str]:
    """The side-by-side table, then the findings (or "consistent")."""
    domain, backup = report.domain, report.backup
    targets = list(domain.images)
    names = list(domain.order)
    if backup:
        names += [n for n in backup.chain if n not in names]
    for target in targets:
        names += [n for n in sorted(domain.bitmaps[target]) if n not in names]
    header = ["checkpoint", "libvirt", *targets]
    if backup:
        header.append("backup set")
    rows = [header]
    for name in names:
        row = [name, "yes" if name in domain.checkpoints else "-"]
        for target in targets:
            bitmap = domain.checkpoints.get(name, {}).get(target, name)
            found = domain.bitmaps[target].get(bitmap)
            row.append(_bitmap_cell(found))
        if backup:
            row.append(backup.levels.get(name, "-"))
        rows.append(row)
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    state = "running" if domain.running else "shut off"
    lines = [f"domain {domain.name} ({state})"]
    if backup:
        lines[0] += f", backup set {backup.directory}"
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    chains: dict[str, int] = {}
    for name in domain.order:
        chain = chain_of(name)
        if chain is not None:
            chains[chain] = chains.get(chain, 0) + 1
    if chains:
        listed = ", ".join(f"{c} ({n} checkpoint{'s' if n > 1 else ''})" for c, n in chains.items())
        lines.append(f"chains of {domain.name}: {listed}")
    if not report.findings:
        lines.append("consistent: no problems found")
    for finding in report.findings:
        lines.append(f"problem: {finding.problem}")
        lines.append(f"    fix: {finding.fix}")
    return lines


def _bitmap_cell(found: Bitmap | None) -> str:
    if found is None:
        return "-"
    if found.broken:
        return "bitmap (inconsistent)"
    return "bitmap (in-use)" if "in-use" in found.flags else "bitmap"
