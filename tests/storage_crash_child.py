"""Child process of the storage crash test: appends and syncs until it is killed.

Usage: python -m tests.storage_crash_child DIRECTORY TERM SEED MAX_ENTRIES

The main thread appends entries whose content depends only on their index; a worker
thread calls sync() in a loop, as the multi-Raft host does, and prints
``synced <index>`` (flushed) each time the synced index advances. After MAX_ENTRIES
entries it waits on stdin, so that the parent decides when it dies.
"""

from __future__ import annotations

import random
import sys
import threading

from tests.unit.storage.helpers import payload_for
from zstream.storage import EntryKind, LogConfig, LogEntry, SegmentedLog

CONFIG = LogConfig(segment_bytes=64 * 1024, index_interval_bytes=1024)


def size_for(index: int) -> int:
    return (index * 7919) % 1200


def kind_for(index: int) -> EntryKind:
    return EntryKind.NOOP if index % 7 == 0 else EntryKind.DATA


def records_for(index: int) -> int:
    return 1 + index % 4 if kind_for(index) == EntryKind.DATA else 0


def main() -> None:
    directory, term, seed, max_entries = sys.argv[1], int(sys.argv[2]), *map(int, sys.argv[3:])
    rng = random.Random(seed)
    log = SegmentedLog.open(directory, CONFIG)
    stop = threading.Event()

    def report(index: int) -> None:
        sys.stdout.write(f"synced {index}\n")
        sys.stdout.flush()

    def syncer() -> None:
        reported = log.synced_index
        while not stop.is_set():
            synced = log.sync()
            if synced > reported:
                report(synced)
                reported = synced

    report(log.synced_index)
    worker = threading.Thread(target=syncer, daemon=True)
    worker.start()
    target = log.last_index + max_entries
    while log.last_index < target:
        entries = []
        offset = log.next_offset
        for index in range(log.last_index + 1, log.last_index + 1 + rng.randint(1, 8)):
            count = records_for(index)
            payload = payload_for(index, size_for(index))
            entries.append(LogEntry(index, term, kind_for(index), offset, count, payload))
            offset += count
        log.append(entries)
    sys.stdin.read()  # wait to be killed; the parent owns this process
    stop.set()
    worker.join()
    log.close()


if __name__ == "__main__":
    main()
