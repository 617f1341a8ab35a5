"""One scan across many processes, GPUs and machines, started by torchrun.

    torchrun --nproc_per_node 8 -m aidetect scan /data --format json --output report.json

The lead (rank 0) lists the files and shares the sorted list; process r scans the files at
positions r, r + N, r + 2N, ... (each file once, every process busy until the end); every few
results each process sends its new ones to the lead, which writes them in the list's order, so
the report is the one a single process writes (only the timing fields differ), with
`processes: N` in its header. Results travel over gloo (TCP), whatever the device, so the same
code runs on CPUs and across machines.

A process that dies makes the lead's next exchange fail (and torchrun stops the lead with
SIGTERM): the lead ends the scan with the report of what it merged so far, marked incomplete.
"""

from __future__ import annotations

import itertools
import os
import re
import signal
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, TypeVar

from aidetect.errors import EXIT_INCOMPLETE, AidetectError
from aidetect.results import ImageResult

EXCHANGE = 64  # results each process sends the lead at a time (the first time: one)
# How long an exchange waits for a process that is alive but slow (a huge image, a cold cache).
TIMEOUT = timedelta(minutes=30)
Item = TypeVar("Item")

if TYPE_CHECKING:  # torch is imported once a scan has several processes: a single-process
    import torch  # scan whose files are all cached never imports it


class ScanStopped(AidetectError):
    """Another process of the scan stopped: the lead writes what it has, marked incomplete."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"{reason}; the report holds the files merged before it",
                         exit_code=EXIT_INCOMPLETE)


@dataclass(frozen=True)
class ScanGroup:
    """This process's place in a torchrun scan."""

    rank: int
    size: int  # processes in the scan
    local_rank: int
    local_size: int  # processes on this machine

    @property
    def lead(self) -> bool:
        return self.rank == 0

    def device(self, device: torch.device) -> torch.device:
        """`cuda` (no index) -> this process's GPU, cuda:LOCAL_RANK; other devices as given."""
        import torch

        if device.type == "cuda" and device.index is None:
            return torch.device("cuda", self.local_rank % torch.cuda.device_count())
        return device

    def workers(self, workers: int | None, per_process: int) -> int:
        """Decoding workers per process: the single-process default shared among the
        processes of this machine, unless given."""
        return workers if workers is not None else max(1, per_process // self.local_size)

    def share(self, candidates: Sequence[Item]) -> list[Item]:
        """The lead's file list, on every process (so all scan the same list)."""
        box = [list(candidates) if self.lead else None]
        try:
            _exchange(_dist().broadcast_object_list, box, src=0)
        except ScanStopped:
            raise AidetectError("the scan's processes could not share the file list (one "
                                "stopped)", exit_code=EXIT_INCOMPLETE) from None
        return box[0]

    def shard(self, candidates: Sequence[Item]) -> list[Item]:
        """The files this process scans."""
        return list(candidates[self.rank :: self.size])

    def merged(self, own: Iterator[ImageResult], total: int) -> Iterator[ImageResult]:
        """The lead: every process's results, in the order of the shared list of `total`."""
        received: list[list[ImageResult]] = [[] for _ in range(self.size)]
        emitted = 0
        for count in _exchange_sizes(total, self.size):
            chunks = [None] * self.size
            _exchange(_dist().gather_object, _take(own, count), chunks, dst=0)
            for rank, chunk in enumerate(chunks):
                received[rank].extend(chunk)
            # Position i of the list is result i // size of process i % size.
            while emitted < total and emitted // self.size < len(received[emitted % self.size]):
                yield received[emitted % self.size][emitted // self.size]
                emitted += 1
        if emitted != total:  # never, unless a process scanned a different list
            raise ScanStopped(f"{total - emitted} results never arrived")

    def send(self, own: Iterator[ImageResult], total: int) -> None:
        """A process other than the lead: scan and send, exchange by exchange."""
        try:
            for count in _exchange_sizes(total, self.size):
                _exchange(_dist().gather_object, _take(own, count), None, dst=0)
        except ScanStopped:
            raise AidetectError("the lead process (rank 0) of the scan stopped; its report, "
                                "if written, is the scan's", exit_code=EXIT_INCOMPLETE) from None

    def close(self) -> None:
        _dist().destroy_process_group()


def join_scan_group() -> ScanGroup | None:
    """Join torchrun's scan when this process is one of several (WORLD_SIZE > 1), else None.

    The lead turns torchrun's SIGTERM (another process failed) into `ScanStopped`, so that
    its report is written, marked incomplete.
    """
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1:
        return None
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group(backend="gloo", timeout=TIMEOUT)
    group = ScanGroup(rank=dist.get_rank(), size=dist.get_world_size(),
                      local_rank=int(os.environ.get("LOCAL_RANK", "0")),
                      local_size=int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    if group.lead:
        signal.signal(signal.SIGTERM, _stopped_by_torchrun)
    return group


def _dist():
    import torch.distributed

    return torch.distributed


def _stopped_by_torchrun(signum, frame) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # a second SIGTERM ends the process
    raise ScanStopped("stopped by torchrun (another process of the scan failed)")


def _exchange(collective, *args, **kwargs) -> None:
    try:
        collective(*args, **kwargs)
    except (RuntimeError, ConnectionError) as error:  # gloo: a peer closed its connection
        text = re.sub(r"^\[[^\]]*\]\s*", "", " ".join(str(error).split()))  # gloo's [file:line]
        reason = text.split(". ")[0][:160]
        raise ScanStopped(f"another process of the scan stopped ({reason})") from None


def _exchange_sizes(total: int, size: int) -> list[int]:
    """How many results each process sends per exchange, until the largest share is sent:
    one first (the first result comes early), then EXCHANGE at a time."""
    largest = -(-total // size)
    sizes = [1] if largest else []
    sent = len(sizes)
    while sent < largest:
        sizes.append(EXCHANGE)
        sent += EXCHANGE
    return sizes


def _take(results: Iterator[ImageResult], count: int) -> list[ImageResult]:
    return list(itertools.islice(results, count))
