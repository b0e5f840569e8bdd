"""One disk's stream of a backup run: NBD export -> ``*.partial`` -> the data file and its checks.

``backup_disks`` runs the disks of a run in parallel (the first failure stops the
others); the data path itself is ``diskstream.copy_extents``.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from contextlib import ExitStack
from datetime import datetime
from pathlib import Path

from vbbackup.engine.backup_ops import (
    nbd_tcp,
    tls_dir,
)
from vbbackup.engine.backup_plan import extents_to_write
from vbbackup.engine.backup_types import BackupConfig, DiskPlan, DiskResult, Reporter
from vbbackup.engine.diskstream import copy_extents
from vbbackup.engine.writeback import WritebackFile
from vbbackup.errors import (
    VbError,
)
from vbbackup.format import StreamMeta, StreamWriter
from vbbackup.fsutil import atomic_output, write_stream_checks
from vbbackup.nbdio import NbdReader, data_size
from vbbackup.virt import (
    BackupJob,
    JobDisk,
)

log = logging.getLogger("vbbackup.backup")


def backup_disks(
    job: BackupJob, plans: list[DiskPlan], config: BackupConfig, reporter: Reporter
) -> list[DiskResult]:
    """All disks, ``config.workers`` at a time; the first failure stops the others."""
    stop = threading.Event()
    workers = max(1, config.workers or len(plans))
    compress_threads = max(1, os.cpu_count() or 1) if config.compress is not None else 0
    with ThreadPoolExecutor(workers, "disk") as disks, ExitStack() as stack:
        pool = (
            stack.enter_context(ThreadPoolExecutor(compress_threads, "lz4"))
            if compress_threads
            else None
        )
        futures: list[Future[DiskResult]] = [
            disks.submit(
                backup_disk, job.socket, job.disks[p.disk.target], p, config, pool, stop, reporter
            )  # fmt: skip
            for p in plans
        ]
        try:
            pending = set(futures)
            while pending:
                done, pending = wait(pending, timeout=0.5, return_when=FIRST_EXCEPTION)
                for fut in done:
                    fut.result()
        except BaseException:
            stop.set()
            raise
    return [f.result() for f in futures]


def backup_disk(
    socket: Path,
    jd: JobDisk,
    plan: DiskPlan,
    config: BackupConfig,
    pool: ThreadPoolExecutor | None,
    stop: threading.Event,
    reporter: Reporter,
) -> DiskResult:
    started = time.monotonic()
    target = plan.disk.target
    tcp = nbd_tcp(config.uri, config.ops)
    with NbdReader(
        socket=None if tcp else socket,
        tcp=tcp,
        tls_dir=tls_dir(config.ops),
        export=jd.export,
        bitmap=jd.bitmap if plan.incremental else None,
        request_size=config.request_size,
        in_flight=config.in_flight,
    ) as reader:
        allocation, dirty = reader.extents()
        extents = extents_to_write(plan, allocation, dirty, config.sparse_detection)
        meta = StreamMeta(
            virtual_size=reader.size,
            data_size=data_size(extents),
            date=datetime.now().isoformat(),
            disk_name=target,
            disk_format=plan.disk.format or "raw",
            checkpoint_name=plan.checkpoint,
            parent_checkpoint=plan.parent,
            incremental=plan.incremental,
            compressed=config.compress if config.compress is not None else False,
        )
        reporter.disk_started(target, meta.data_size)
        log.info("%s: %d extents, %d data bytes -> %s", target, len(extents), meta.data_size,
                 plan.path.name)  # fmt: skip
        done = 0

        def progress(n: int) -> None:
            nonlocal done
            done += n
            reporter.disk_progress(target, done)

        try:
            with atomic_output(plan.path) as f, WritebackFile(f) as out:
                writer = StreamWriter(out, meta)  # type: ignore[arg-type]
                copy_extents(
                    reader,
                    extents,
                    writer,
                    pool=pool,
                    level=config.compress or 0,
                    stop=stop,
                    progress=progress,
                    out=out,
                )
                writer.finish()
            write_stream_checks(plan.path, writer)
        except OSError as err:
            raise VbError(f"cannot write {plan.path}: {err.strerror or err}") from None
    result = DiskResult(
        target=target,
        level=plan.level,
        path=str(plan.path),
        data_bytes=meta.data_size,
        zero_bytes=sum(e.length for e in extents if e.zero),
        file_bytes=plan.path.stat().st_size,
        seconds=time.monotonic() - started,
    )
    log.info("%s: %d data bytes, file %d bytes, %.1f s", target, result.data_bytes,
             result.file_bytes, result.seconds)  # fmt: skip
    reporter.disk_done(result)
    return result
