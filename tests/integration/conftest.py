from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import EtcdServer


@pytest.fixture
def etcd(tmp_path: Path) -> Iterator[EtcdServer]:
    server = EtcdServer(tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.stop()
