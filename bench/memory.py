"""Memory of a server's process tree, read from /proc while the load runs.

Every server the bench measures runs in a process group of its own (`Service` starts each
with `start_new_session`), so "the server" is every process whose pgrp is its group id:
gunicorn's arbiter and workers, `mlflow models serve` and the uvicorn it spawns.

RSS summed over a group counts pages shared by a forked parent and child twice; PSS (from
/proc/<pid>/smaps_rollup) splits them, so both are kept.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

PROC = Path("/proc")
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")
MIB = 1024 * 1024


@dataclass(frozen=True)
class GroupMemory:
    """Memory summed over the processes of some process groups at one moment."""

    rss_bytes: int
    pss_bytes: int
    processes: int

    @property
    def rss_mib(self) -> float:
        return self.rss_bytes / MIB

    @property
    def pss_mib(self) -> float:
        return self.pss_bytes / MIB


def group_pids(pgid: int, proc: Path = PROC) -> list[int]:
    """The live processes whose process group is `pgid`."""
    pids = []
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:  # gone between listing and reading
            continue
        # The command name may hold spaces and parentheses: fields start after the last ')'.
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[2]) == pgid:  # state, ppid, pgrp
            pids.append(int(entry.name))
    return pids


def process_memory(pid: int, proc: Path = PROC) -> tuple[int, int]:
    """(RSS, PSS) of one process in bytes; (0, 0) if it is gone."""
    try:
        rss_pages = int((proc / str(pid) / "statm").read_text().split()[1])
    except (OSError, IndexError, ValueError):
        return 0, 0
    pss = 0
    with contextlib.suppress(OSError):
        for line in (proc / str(pid) / "smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                pss = int(line.split()[1]) * 1024
                break
    return rss_pages * PAGE_SIZE, pss


def groups_memory(pgids: Iterable[int], proc: Path = PROC) -> GroupMemory:
    """RSS and PSS summed over every process of the given groups."""
    rss = pss = count = 0
    for pgid in pgids:
        for pid in group_pids(pgid, proc):
            process_rss, process_pss = process_memory(pid, proc)
            if process_rss:
                rss += process_rss
                pss += process_pss
                count += 1
    return GroupMemory(rss, pss, count)


@dataclass(frozen=True)
class ProcessMemory:
    """One process of a group: what runs there and its memory."""

    pid: int
    command: str
    rss_mib: float
    pss_mib: float


def group_processes(pgid: int, proc: Path = PROC) -> list[ProcessMemory]:
    """Each process of a group with its command line and memory, largest RSS first."""
    processes = []
    for pid in group_pids(pgid, proc):
        rss, pss = process_memory(pid, proc)
        try:
            argv = (proc / str(pid) / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        command = " ".join(part.decode(errors="replace") for part in argv if part)
        processes.append(ProcessMemory(pid, command[:160], rss / MIB, pss / MIB))
    return sorted(processes, key=lambda process: -process.rss_mib)


class PeakMemory:
    """Samples some process groups every `interval` seconds in a thread; keeps the peaks.

    with PeakMemory([server_pgid]) as peak:
        run_load()
    peak.rss_bytes, peak.pss_bytes
    """

    def __init__(self, pgids: Iterable[int], *, interval: float = 0.2) -> None:
        self.pgids = list(pgids)
        self.interval = interval
        self.rss_bytes = 0
        self.pss_bytes = 0
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample_until_stopped, daemon=True)

    def sample(self) -> GroupMemory:
        memory = groups_memory(self.pgids)
        self.rss_bytes = max(self.rss_bytes, memory.rss_bytes)
        self.pss_bytes = max(self.pss_bytes, memory.pss_bytes)
        self.samples += 1
        return memory

    def _sample_until_stopped(self) -> None:
        while True:
            self.sample()
            if self._stop.wait(self.interval):
                return

    def __enter__(self) -> PeakMemory:
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()

    @property
    def rss_mib(self) -> float:
        return self.rss_bytes / MIB

    @property
    def pss_mib(self) -> float:
        return self.pss_bytes / MIB
