"""Storage engine benchmark: the segmented log against raw file I/O on the same disk.

Append: 1 KiB and 64 KiB payloads, with a sync after every entry and after every 64
entries. The log appends one call per sync interval (what the multi-Raft host does:
append what arrived, then group-commit) and the raw baseline writes the very same bytes
(entry headers included) with one os.write per interval plus os.fdatasync, into a fresh
file beside the log's directory (same filesystem; both files start with a 32-byte header
written and synced before the clock starts). Read: what a consumer fetch does,
sequential read_raw calls with a 1 MiB budget (one pread per chunk, entries as stored,
no per-entry work), against os.pread of the same segment files in 1 MiB chunks, page
cache warm, the log opened once per case (opening scans the active segment, which is not
what is measured; doing it before every log run skewed the log side). Two more lines,
for information only (not in read_ratio): the per-entry read() path that Raft uses
(decodes and verifies every entry), and a fetch followed by the client's verification of
every entry with iter_raw_entries.

Raw and log runs alternate, repeated, because the machine is shared: each round runs
both back to back (in alternating order), the ratio is the median of the per-round
ratios, and the MB/s figures are medians over the rounds. Prints a table, writes JSON
under bench/results/ and ends with

    storage append_ratio=X read_ratio=Y

where each ratio is log throughput / raw throughput, the worst across the cases.
Targets: append_ratio >= 0.8, read_ratio >= 0.5.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from zstream.storage import (  # noqa: E402
    EntryKind,
    LogConfig,
    LogEntry,
    SegmentedLog,
    iter_raw_entries,
)

RESULTS = ROOT / "bench" / "results"
READ_CHUNK = 1 << 20
READ_PASSES = 5  # a pass over a read case's log takes milliseconds: time several
HEADER = 45  # entry header bytes, so the raw baseline writes the same byte count


@dataclass
class Case:
    payload_bytes: int
    sync_every: int
    entries: int


def _entries(count: int, payload: bytes, first_index: int, first_offset: int) -> list[LogEntry]:
    return [
        LogEntry(first_index + i, 1, EntryKind.DATA, first_offset + i, 1, payload)
        for i in range(count)
    ]


def run_log_append(directory: Path, case: Case, payload: bytes) -> float:
    """Seconds to append case.entries entries, syncing every case.sync_every."""
    shutil.rmtree(directory, ignore_errors=True)
    with SegmentedLog.open(directory, LogConfig()) as log:
        groups = [
            _entries(case.sync_every, payload, 1 + g * case.sync_every, g * case.sync_every)
            for g in range(case.entries // case.sync_every)
        ]
        start = time.perf_counter()
        for group in groups:
            log.append(group)
            log.sync()
        return time.perf_counter() - start


def run_raw_append(path: Path, case: Case, payload: bytes) -> float:
    """Seconds to write the same bytes with os.write + os.fdatasync."""
    path.unlink(missing_ok=True)
    group = (b"\x00" * HEADER + payload) * case.sync_every
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.write(fd, b"\x00" * 32)  # the segment header
        os.fdatasync(fd)
        start = time.perf_counter()
        for _ in range(case.entries // case.sync_every):
            os.write(fd, group)
            os.fdatasync(fd)
        return time.perf_counter() - start
    finally:
        os.close(fd)


def run_log_read(directory: Path, log: SegmentedLog) -> tuple[float, int]:
    start = time.perf_counter()
    total = 0
    for _ in range(READ_PASSES):
        index = log.first_index
        while index <= log.last_index:
            entries = log.read(index, log.last_index + 1, READ_CHUNK)
            for entry in entries:
                total += len(entry.payload)
            index = entries[-1].index + 1
    return time.perf_counter() - start, total


def run_log_fetch(directory: Path, log: SegmentedLog) -> tuple[float, int]:
    start = time.perf_counter()
    total = 0
    for _ in range(READ_PASSES):
        index = log.first_index
        last = log.last_index
        while index <= last:
            chunk = log.read_raw(index, READ_CHUNK)
            total += len(chunk.data)
            index = chunk.last_index + 1
    return time.perf_counter() - start, total


def run_log_fetch_verify(directory: Path, log: SegmentedLog) -> tuple[float, int]:
    start = time.perf_counter()
    total = 0
    for _ in range(READ_PASSES):
        index = log.first_index
        last = log.last_index
        while index <= last:
            chunk = log.read_raw(index, READ_CHUNK)
            for _, payload in iter_raw_entries(chunk.data):
                total += len(payload)
            index = chunk.last_index + 1
    return time.perf_counter() - start, total


def run_raw_read(directory: Path, log: SegmentedLog) -> tuple[float, int]:
    """The same segment files, in READ_CHUNK preads, through the raw file descriptors."""
    fds = [os.open(p, os.O_RDONLY) for p in sorted(directory.glob("*.log"))]
    try:
        start = time.perf_counter()
        total = 0
        for _ in range(READ_PASSES):
            for fd in fds:
                pos = 0
                while True:
                    chunk = os.pread(fd, READ_CHUNK, pos)
                    if not chunk:
                        break
                    pos += len(chunk)
                    total += len(chunk)
        return time.perf_counter() - start, total
    finally:
        for fd in fds:
            os.close(fd)


def _summary(
    name: str, entries: int, entry_bytes: int, log_rates: list[float], raw_rates: list[float]
) -> dict[str, float | int | str]:
    """Medians over the rounds; the ratio is the median of the per-round ratios, each
    round running raw and log back to back, so slow phases of the shared disk hit both."""
    log_rate, raw_rate = statistics.median(log_rates), statistics.median(raw_rates)
    return {
        "name": name,
        "entries": entries,
        "rounds": len(log_rates),
        "log_MBps": log_rate / 1e6,
        "raw_MBps": raw_rate / 1e6,
        "log_entries_per_s": log_rate / entry_bytes,
        "ratio": statistics.median(lg / rw for lg, rw in zip(log_rates, raw_rates, strict=True)),
        "log_MBps_all": [r / 1e6 for r in log_rates],
        "raw_MBps_all": [r / 1e6 for r in raw_rates],
    }


def bench_append(work: Path, case: Case, rounds: int) -> dict[str, float | int | str]:
    payload = os.urandom(case.payload_bytes)
    entry_bytes = HEADER + case.payload_bytes
    total = entry_bytes * case.entries
    log_rates: list[float] = []
    raw_rates: list[float] = []
    for r in range(rounds):
        order = ("raw", "log") if r % 2 == 0 else ("log", "raw")
        for side in order:
            if side == "raw":
                raw_rates.append(total / run_raw_append(work / "raw.bin", case, payload))
            else:
                log_rates.append(total / run_log_append(work / "log", case, payload))
    name = f"append {case.payload_bytes // 1024} KiB sync/{case.sync_every}"
    return _summary(name, case.entries, entry_bytes, log_rates, raw_rates)


def bench_read(
    work: Path, payload_bytes: int, entries: int, rounds: int
) -> list[dict[str, float | int | str]]:
    """The fetch row (in read_ratio), then the two information rows."""
    directory = work / f"read-{payload_bytes}"
    shutil.rmtree(directory, ignore_errors=True)
    payload = os.urandom(payload_bytes)
    with SegmentedLog.open(directory, LogConfig()) as log:
        step = 256
        for g in range(0, entries, step):
            log.append(_entries(min(step, entries - g), payload, 1 + g, g))
        log.sync()
    file_bytes = READ_PASSES * sum(p.stat().st_size for p in directory.glob("*.log"))
    log_sides = (run_log_fetch, run_log_read, run_log_fetch_verify)
    log_rates: dict[str, list[float]] = {fn.__name__: [] for fn in log_sides}
    raw_rates: dict[str, list[float]] = {fn.__name__: [] for fn in log_sides}
    # Opened once: opening scans the active segment, which is not what is measured.
    with SegmentedLog.open(directory, LogConfig()) as log:
        run_raw_read(directory, log)  # warm the page cache
        for r in range(rounds):
            # Each log side runs back to back with its own raw run, alternating which
            # of the two goes first, so a slow phase of the shared machine hits both.
            for fn in log_sides:
                pair = (run_raw_read, fn) if r % 2 == 0 else (fn, run_raw_read)
                for side in pair:
                    seconds, _ = side(directory, log)
                    rates = raw_rates if side is run_raw_read else log_rates
                    rates[fn.__name__].append(file_bytes / seconds)
    shutil.rmtree(directory, ignore_errors=True)
    kib = payload_bytes // 1024
    entry_bytes = HEADER + payload_bytes
    names = {
        "run_log_fetch": f"read {kib} KiB fetch",
        "run_log_read": f"  (info) read() {kib} KiB",
        "run_log_fetch_verify": f"  (info) fetch+verify {kib} KiB",
    }
    return [
        _summary(names[key], entries, entry_bytes, log_rates[key], raw_rates[key]) for key in names
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small runs, under 45 s")
    parser.add_argument("--dir", type=Path, default=RESULTS, help="where the files go")
    args = parser.parse_args()
    scale = 1 if args.quick else 3
    rounds = 15 if args.quick else 31
    cases = [
        Case(1024, 1, 300 * scale),
        Case(1024, 64, 64 * 40 * scale),
        Case(64 * 1024, 1, 150 * scale),
        Case(64 * 1024, 64, 64 * 4 * scale),
    ]
    args.dir.mkdir(parents=True, exist_ok=True)
    work = args.dir / f"storage-bench-{os.getpid()}"
    work.mkdir()
    started = time.perf_counter()
    try:
        appends = [bench_append(work, case, rounds) for case in cases]
        reads = [
            *bench_read(work, 1024, 32_000 * scale, rounds),
            *bench_read(work, 64 * 1024, 512 * scale, rounds),
        ]
    finally:
        shutil.rmtree(work, ignore_errors=True)
    rows = appends + reads
    print(f"{'case':<32}{'log MB/s':>12}{'raw MB/s':>12}{'log entries/s':>16}{'ratio':>8}")
    for row in rows:
        print(
            f"{row['name']:<32}{row['log_MBps']:>12.1f}{row['raw_MBps']:>12.1f}"
            f"{row['log_entries_per_s']:>16.0f}{row['ratio']:>8.2f}"
        )
    append_ratio = min(float(r["ratio"]) for r in appends)
    read_ratio = min(float(r["ratio"]) for r in reads if "(info)" not in str(r["name"]))
    print(
        "targets: append_ratio >= 0.8, read_ratio >= 0.5 (fetch rows; (info) rows "
        "are not in the ratio); "
        f"took {time.perf_counter() - started:.1f} s"
    )
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    out = RESULTS / f"storage-{stamp}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps(
            {
                "quick": args.quick,
                "rounds": rounds,
                "cases": rows,
                "append_ratio": append_ratio,
                "read_ratio": read_ratio,
            },
            indent=2,
        )
    )
    print(f"storage append_ratio={append_ratio:.2f} read_ratio={read_ratio:.2f}")


if __name__ == "__main__":
    main()
