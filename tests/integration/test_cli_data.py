"""The data side of the CLI on three real brokers (static peers): ``zstream produce``
with keys, headers and JSON lines; ``zstream consume --format`` / ``--output json``;
``zstream group reset-offsets`` in each mode and ``zstream group delete``, both refused
while the group has a member."""

from __future__ import annotations

import asyncio
import base64
import datetime
import json
import sys
from collections.abc import Iterator

import crc32c
import pytest

from tests.support import BrokerProcess, bootstrap_of, running_brokers, wait_until_async
from zstream import storage
from zstream.clients import Admin, ClusterClient, Consumer, ProduceRequest, UnknownGroupError

# The first test also waits for the module's cluster to form.
pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

# Two batches per partition: five records stamped OLD, then five stamped NEW.
OLD_MS = 1_700_000_000_000  # 2023-11-14T22:13:20Z
NEW_MS = OLD_MS + 100_000
BETWEEN = "2023-11-14T22:14:00Z"  # OLD_MS + 40 s


@pytest.fixture(scope="module")
def bootstrap(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    brokers: list[BrokerProcess]
    with running_brokers(tmp_path_factory.mktemp("cli")) as brokers:
        yield bootstrap_of(brokers)


async def zstream(
    bootstrap: str, *args: str, stdin: bytes = b"", check: bool = True
) -> tuple[int, bytes, str]:
    """Run ``zstream ARGS`` against the cluster; (exit status, stdout, stderr)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "zstream.broker.cli",
        *args,
        "--bootstrap",
        bootstrap,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(stdin), 60)
    assert proc.returncode is not None
    if check:
        assert proc.returncode == 0, err.decode()
    return proc.returncode, out, err.decode()


async def test_keys_headers_and_formats(bootstrap: str) -> None:
    await zstream(bootstrap, "topic", "create", "kv", "--partitions", "2")
    lines = b"user-1:hello\nuser-2:world\nno key here\nuser-1:again\n"
    _, _, err = await zstream(
        bootstrap,
        "produce", "kv", "--key-separator", ":", "--header", "src=cli", "--header", "n=1",
        stdin=lines,
    )  # fmt: skip
    assert "produced 4 record(s)" in err
    _, out, _ = await zstream(
        bootstrap,
        "consume", "kv", "--from-beginning", "--format", r"%p|%o|%k|%K|%s|%S|%h|%t|%%\n",
    )  # fmt: skip
    rows = [line.split("|") for line in out.decode().splitlines()]
    assert len(rows) == 4
    by_value = {r[4]: r for r in rows}
    for key, value in (("user-1", "hello"), ("user-2", "world"), ("user-1", "again")):
        p, _, k, klen, v, vlen, headers, topic, pct = by_value[value]
        assert int(p) == crc32c.crc32c(key.encode()) % 2  # placed by the key's hash
        assert (k, klen, v, vlen) == (key, str(len(key)), value, str(len(value)))
        assert (headers, topic, pct) == ("src=cli,n=1", "kv", "%")
    assert by_value["no key here"][2:4] == ["", "-1"]
    # Offsets are dense per partition and the two user-1 records keep their order.
    for p in ("0", "1"):
        offsets = [int(r[1]) for r in rows if r[0] == p]
        assert sorted(offsets) == list(range(len(offsets)))
    user1 = [r for r in rows if r[2] == "user-1"]
    assert [r[4] for r in sorted(user1, key=lambda r: int(r[1]))] == ["hello", "again"]

    # The default output is unchanged: the values, one per line.
    _, out, _ = await zstream(bootstrap, "consume", "kv", "--partition", "0", "--from-beginning")
    assert out.decode().splitlines() == [r[4] for r in sorted(rows) if r[0] == "0"]
    status, _, err = await zstream(bootstrap, "consume", "kv", "--format", "%x", check=False)
    assert status == 1
    assert "unknown field %x" in err


async def test_json_lines_round_trip(bootstrap: str) -> None:
    await zstream(bootstrap, "topic", "create", "js", "--partitions", "2")
    binary = bytes(range(250, 256)) + b"\x00\xff"
    raw = base64.b64encode(binary).decode()
    records = [
        {"key": "a", "value": "text é", "headers": {"h": "1"}, "partition": 1},
        {"value": {"n": 1, "list": [1, 2]}, "partition": 1},
        {"key_b64": raw, "value_b64": raw,
         "headers_b64": {"raw": base64.b64encode(b"\xff").decode()}, "partition": 1},
        {"key": None, "value": "zero", "partition": 0},
    ]  # fmt: skip
    stdin = b"".join(json.dumps(r).encode() + b"\n" for r in records) + b"\n"
    await zstream(bootstrap, "produce", "js", "--input", "jsonl", "--header", "x=y", stdin=stdin)
    _, out, _ = await zstream(bootstrap, "consume", "js", "--from-beginning", "--output", "json")
    docs = [json.loads(line) for line in out.splitlines()]
    by_partition = {p: [d for d in docs if d["partition"] == p] for p in (0, 1)}
    assert [d["offset"] for d in by_partition[1]] == [0, 1, 2]
    first, second, third = by_partition[1]
    assert first["key"] == "a"
    assert first["value"] == "text é"
    assert first["headers"] == {"h": "1", "x": "y"}
    assert first["topic"] == "js"
    assert isinstance(first["timestamp_ms"], int)
    assert second["key"] is None
    assert json.loads(second["value"]) == {"n": 1, "list": [1, 2]}
    assert base64.b64decode(third["key_b64"]) == binary == base64.b64decode(third["value_b64"])
    assert "key" not in third
    assert "value" not in third
    assert third["headers_b64"] == {"raw": base64.b64encode(b"\xff").decode()}
    assert third["headers"] == {"x": "y"}
    assert by_partition[0][0]["value"] == "zero"

    # What --output json prints, --input jsonl reads back: copy the topic.
    await zstream(bootstrap, "topic", "create", "js-copy", "--partitions", "2")
    await zstream(bootstrap, "produce", "js-copy", "--input", "jsonl", stdin=out)
    _, copied, _ = await zstream(
        bootstrap, "consume", "js-copy", "--from-beginning", "--output", "json"
    )
    strip = ("topic", "timestamp_ms")
    assert sorted(
        json.dumps({k: v for k, v in json.loads(line).items() if k not in strip}, sort_keys=True)
        for line in copied.splitlines()
    ) == sorted(
        json.dumps({k: v for k, v in d.items() if k not in strip}, sort_keys=True) for d in docs
    )
    status, _, err = await zstream(
        bootstrap, "produce", "js", "--input", "jsonl", stdin=b'{"key": "k"}\n', check=False
    )
    assert status == 1
    assert "input line 1" in err
    assert "value" in err


async def _stamped_topic(bootstrap: str, topic: str, partitions: int) -> None:
    """Each partition: five records at OLD_MS, then five at NEW_MS (offsets 0-9)."""
    async with Admin(bootstrap) as admin:
        await admin.create_topic(topic, partitions=partitions, replication_factor=3)
    async with ClusterClient(bootstrap, retry_for_s=20) as cluster:
        await cluster.refresh([topic])
        for p in range(partitions):
            for ts in (OLD_MS, NEW_MS):
                batch = storage.encode_batch([(None, b"r")] * 5, timestamp_ms=ts)
                await cluster.call_leader(topic, p, ProduceRequest(topic, p), [batch])


async def _committed(bootstrap: str, group: str) -> dict[tuple[str, int], int]:
    async with Admin(bootstrap) as admin:
        return await admin.fetch_offsets(group)


async def test_reset_offsets_in_each_mode_and_delete(bootstrap: str) -> None:
    topic, group = "stamped", "resetters"
    await _stamped_topic(bootstrap, topic, 2)
    reset = ("group", "reset-offsets", group, "--topic", topic)

    _, out, _ = await zstream(bootstrap, *reset, "--to-latest")
    assert await _committed(bootstrap, group) == {(topic, 0): 10, (topic, 1): 10}
    assert "reset" in out.decode()
    await zstream(bootstrap, *reset, "--to-earliest")
    assert await _committed(bootstrap, group) == {(topic, 0): 0, (topic, 1): 0}
    await zstream(bootstrap, *reset, "--to-offset", "7")
    assert await _committed(bootstrap, group) == {(topic, 0): 7, (topic, 1): 7}
    _, out, _ = await zstream(bootstrap, *reset, "--to-offset", "99")  # clamped to the end
    assert await _committed(bootstrap, group) == {(topic, 0): 10, (topic, 1): 10}
    assert [line.split() for line in out.decode().splitlines()[2:]] == [
        ["0", "7", "10"],
        ["1", "7", "10"],
    ]
    await zstream(bootstrap, *reset, "--to-datetime", BETWEEN)
    assert await _committed(bootstrap, group) == {(topic, 0): 5, (topic, 1): 5}
    before_all = datetime.datetime.fromtimestamp(OLD_MS / 1000 - 1, datetime.UTC)
    await zstream(bootstrap, *reset, "--to-datetime", before_all.isoformat())
    assert await _committed(bootstrap, group) == {(topic, 0): 0, (topic, 1): 0}
    await zstream(bootstrap, *reset, "--to-datetime", "2030-01-01T00:00:00")  # no zone: UTC
    assert await _committed(bootstrap, group) == {(topic, 0): 10, (topic, 1): 10}
    status, _, err = await zstream(bootstrap, *reset, "--to-datetime", "yesterday", check=False)
    assert status == 1
    assert "ISO 8601" in err

    # A member present: both commands are refused and nothing changes.
    await zstream(bootstrap, *reset, "--to-offset", "3")
    consumer = Consumer(bootstrap, group=group, enable_auto_commit=False)
    try:
        await consumer.subscribe([topic])
        await wait_until_async(
            lambda: _has_members(bootstrap, group), 30, "the consumer to join the group"
        )
        status, _, err = await zstream(bootstrap, *reset, "--to-earliest", check=False)
        assert status == 1
        assert "1 member(s)" in err
        assert "stop its consumers" in err
        status, _, err = await zstream(bootstrap, "group", "delete", group, check=False)
        assert status == 1
        assert "member" in err
        assert await _committed(bootstrap, group) == {(topic, 0): 3, (topic, 1): 3}
    finally:
        await consumer.close()
    await wait_until_async(
        lambda: _has_no_members(bootstrap, group), 30, "the consumer to leave the group"
    )

    _, out, _ = await zstream(bootstrap, "group", "delete", group)
    assert f"deleted group {group}" in out.decode()
    assert await _committed(bootstrap, group) == {}
    _, out, _ = await zstream(bootstrap, "group", "list")
    assert group not in out.decode().split()
    async with Admin(bootstrap) as admin:
        with pytest.raises(UnknownGroupError):
            await admin.describe_group(group)
    status, _, err = await zstream(bootstrap, "group", "delete", group, check=False)
    assert status == 1
    assert "unknown group" in err


async def _has_members(bootstrap: str, group: str) -> bool:
    async with Admin(bootstrap) as admin:
        try:
            return bool((await admin.describe_group(group))["members"])
        except UnknownGroupError:
            return False


async def _has_no_members(bootstrap: str, group: str) -> bool:
    return not await _has_members(bootstrap, group)
