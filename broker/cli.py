"""The ``zstream`` command line.

User errors (an unknown topic, an unreachable broker, a bad flag) print one line
on stderr and exit 1, without a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import sys
import time
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any, TypeVar

from zstream import __version__, storage
from zstream.broker._cli_format import (
    FormatError,
    InputRecord,
    Template,
    parse_header_flags,
    parse_json_line,
    parse_text_line,
    record_json,
)
from zstream.broker._config import BrokerConfig, ConfigError, load_config
from zstream.clients import (
    Acks,
    AclEntry,
    AclOperation,
    AclPermission,
    Admin,
    ClusterClient,
    ConnectionLostError,
    Consumer,
    CreateTopicRequest,
    CredentialsError,
    DeleteTopicRequest,
    DescribeTopicRequest,
    FencedMemberError,
    FetchRequest,
    ListTopicsRequest,
    MetadataRequest,
    PatternType,
    Producer,
    ProduceRequest,
    ResourceType,
    TopicPartition,
    UnknownGroupError,
    ZStreamError,
)
from zstream.clients._acl import CLUSTER_RESOURCE
from zstream.clients._admin import partition_bounds
from zstream.clients._protocol import ListReassignmentsRequest

__all__ = ["DEV_BOOTSTRAP", "build_parser", "main"]

# Where `zstream dev` puts its brokers' client sockets (7101, 7102, ...), so that
# client commands need no flag against a dev cluster.
DEV_CLIENT_PORT = 7101
DEV_PEER_PORT = 7201
DEV_METRICS_PORT = 7301
DEV_BOOTSTRAP = ",".join(f"127.0.0.1:{DEV_CLIENT_PORT + i}" for i in range(3))
DEV_DEFAULT_BROKERS = 3
# uvloop: a faster loop for the socket-heavy broker (ZSTREAM_EVENT_LOOP=asyncio to compare).
DEFAULT_EVENT_LOOP = "uvloop"


class UserError(Exception):
    """Printed as one line; exit status 1."""


# -- argument parsing -----------------------------------------------------------------


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0: {text}")
    return value


def _non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0: {text}")
    return value


def _add_bootstrap(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--bootstrap",
        metavar="HOST:PORT[,...]",
        default=os.environ.get("ZSTREAM_BOOTSTRAP", DEV_BOOTSTRAP),
        help="brokers to contact (default: $ZSTREAM_BOOTSTRAP, else where `zstream dev` "
        f"listens: {DEV_BOOTSTRAP})",
    )
    _add_credentials(parser)


def _add_credentials(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--credentials",
        metavar="PATH",
        default=os.environ.get("ZSTREAM_CREDENTIALS") or None,
        help="CURVE: this client's secret key file, NAME.key_secret "
        "(default: $ZSTREAM_CREDENTIALS; none: no security)",
    )
    parser.add_argument(
        "--server-key",
        metavar="PATH",
        default=os.environ.get("ZSTREAM_SERVER_KEY") or None,
        help="CURVE: the cluster's client-facing public key file, or a directory holding "
        "server.key (default: $ZSTREAM_SERVER_KEY)",
    )


def default_dev_data_dir() -> Path:
    """``zstream dev``'s data: ``$ZSTREAM_DEV_DATA``, else the XDG data directory (an
    installed zstream has no source tree to keep it in)."""
    explicit = os.environ.get("ZSTREAM_DEV_DATA")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "zstream" / "dev"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="zstream", description="zstream event-streaming server")
    parser.add_argument("--version", action="version", version=f"zstream {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    b = sub.add_parser("broker", help="run one broker", description="Run one broker.")
    b.add_argument("--config", type=Path, help="TOML config file (flags and ZSTREAM_* win)")
    b.add_argument("--id", dest="broker_id", type=_positive_int, help="broker id (>= 1)")
    b.add_argument("--data-dir", dest="data_dir", help="where logs and metadata live")
    b.add_argument("--client-addr", dest="client_addr", help="HOST:PORT for clients")
    b.add_argument("--peer-addr", dest="peer_addr", help="HOST:PORT for other brokers")
    b.add_argument("--etcd", dest="etcd_endpoints", help="etcd HOST:PORT[,...] for discovery")
    b.add_argument(
        "--peers", help="static cluster: ID@CLIENT_HOST:PORT@PEER_HOST:PORT[,...] (no etcd)"
    )
    b.add_argument(
        "--bootstrap-expect",
        dest="bootstrap_expect",
        type=_positive_int,
        help="form the controller once N brokers are registered",
    )
    b.add_argument("--metrics-addr", dest="metrics_addr", help="HOST:PORT for Prometheus")
    b.add_argument("--cluster-name", dest="cluster_name", help="etcd key namespace")
    b.add_argument("--no-fsync", dest="fsync", action="store_false", default=None)
    b.add_argument("--log-level", dest="log_level", help="DEBUG, INFO, WARNING or ERROR")
    b.add_argument(
        "--auto-rebalance",
        dest="auto_rebalance",
        action="store_true",
        default=None,
        help="rebalance when a broker joins or a re-placement ends (docs/operations.md)",
    )
    sec = b.add_argument_group("security (docs/security.md)")
    sec.add_argument(
        "--curve-secret-key-file",
        dest="curve_secret_key_file",
        metavar="PATH",
        help="this broker's peer key pair (ID.key_secret); turns CURVE on",
    )
    sec.add_argument(
        "--peer-keys-dir", dest="peer_keys_dir", metavar="DIR", help="broker public keys, ID.key"
    )
    sec.add_argument(
        "--client-secret-key-file",
        dest="client_secret_key_file",
        metavar="PATH",
        help="the client-facing key pair, the same on every broker",
    )
    sec.add_argument(
        "--client-credentials-dir",
        dest="client_credentials_dir",
        metavar="DIR",
        help="client public keys, PRINCIPAL.key",
    )
    sec.add_argument(
        "--super-users", dest="super_users", metavar="NAME[,...]", help="principals allowed all"
    )
    sec.add_argument(
        "--insecure",
        dest="insecure",
        action="store_true",
        default=None,
        help="allow binding outside 127.0.0.0/8 without security",
    )
    _add_broker_actions(b)

    d = sub.add_parser(
        "dev",
        help="run etcd and a local cluster in the foreground",
        description="Start etcd and N brokers on local ports; Ctrl-C stops them all.",
    )
    d.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        help="where etcd's and the brokers' data and logs go (default: $ZSTREAM_DEV_DATA, "
        "else $XDG_DATA_HOME/zstream/dev, i.e. ~/.local/share/zstream/dev)",
    )
    d.add_argument("--brokers", type=_positive_int, default=DEV_DEFAULT_BROKERS)
    d.add_argument(
        "--secure",
        action="store_true",
        help="generate keys (brokers, the client-facing key, an `admin` super user) and "
        "run the cluster with CURVE; prints the exports a client needs",
    )
    d.add_argument(
        "--port-base",
        type=int,
        default=DEV_CLIENT_PORT,
        help=f"broker i listens for clients on BASE+i-1, peers on BASE+100+i-1, metrics on "
        f"BASE+200+i-1 (default {DEV_CLIENT_PORT}); 0 picks free ports",
    )

    k = sub.add_parser("keys", help="generate CURVE key pairs")
    ksub = k.add_subparsers(dest="keys_command", metavar="ACTION", required=True)
    kg = ksub.add_parser(
        "generate",
        help="write NAME.key (public) and NAME.key_secret (mode 0600) into --out",
        description="Write a CURVE key pair in pyzmq's zmq.auth format.",
    )
    kg.add_argument("name", help="a broker id (peer keys) or a principal name (client keys)")
    kg.add_argument("--out", type=Path, default=Path("."), help="directory (default: .)")
    kg.add_argument("--force", action="store_true", help="replace existing files")

    t = sub.add_parser("topic", help="create, list, describe or delete topics")
    tsub = t.add_subparsers(dest="topic_command", metavar="ACTION", required=True)
    tc = tsub.add_parser("create", help="create a topic")
    tc.add_argument("name")
    tc.add_argument("--partitions", type=_positive_int, default=1)
    tc.add_argument("--replication-factor", type=_positive_int, default=1)
    tc.add_argument(
        "--config",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="retention_bytes, retention_ms or segment_bytes (repeatable)",
    )
    _add_bootstrap(tc)
    for action, what in (("list", "list topics"), ("describe", "describe a topic")):
        p = tsub.add_parser(action, help=what)
        if action == "describe":
            p.add_argument("name")
        _add_bootstrap(p)
        _add_output(p)
    _add_topic_alter_parser(tsub)
    td = tsub.add_parser("delete", help="delete a topic and its data")
    td.add_argument("name")
    _add_bootstrap(td)

    p = sub.add_parser(
        "produce", help="send one record per stdin line", description="Produce records."
    )
    p.add_argument("topic")
    p.add_argument("--partition", type=int, help="only this partition (default: round robin)")
    p.add_argument("--acks", choices=[a.value for a in Acks], default=Acks.ALL.value)
    p.add_argument("--count", type=_positive_int, help="send N synthetic records instead")
    p.add_argument("--size", type=_positive_int, default=100, help="synthetic record bytes")
    p.add_argument("--batch", type=_positive_int, default=500, help="records per batch")
    p.add_argument(
        "--input",
        choices=["lines", "jsonl"],
        default="lines",
        help="lines: each stdin line is a value (default); jsonl: each line is a JSON "
        'object {"key", "value", "headers", "partition"} (see docs/cli.md)',
    )
    p.add_argument(
        "--key-separator",
        metavar="SEP",
        help="lines input: split each line at the first SEP into KEY and VALUE "
        "(a line without SEP has no key; \\t means a tab)",
    )
    p.add_argument(
        "--header",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="add this header to every record (repeatable)",
    )
    _add_bootstrap(p)

    c = sub.add_parser("consume", help="print one record value per line")
    c.add_argument("topic")
    c.add_argument("--partition", type=int, help="only this partition")
    c.add_argument("--from-beginning", action="store_true", help="start at the log start")
    c.add_argument("--follow", action="store_true", help="keep waiting for new records")
    c.add_argument("--max", type=_positive_int, help="stop after N records")
    c.add_argument(
        "--group",
        help="consume as a member of this consumer group: start from its committed "
        "offsets (else as --from-beginning says), commit what was printed on exit",
    )
    shape = c.add_mutually_exclusive_group()
    shape.add_argument(
        "--format",
        metavar="TEMPLATE",
        help="print each record as TEMPLATE, as kcat -f: %%s value, %%k key, %%t topic, "
        "%%p partition, %%o offset, %%T timestamp ms, %%h headers, %%S/%%K value/key "
        "length, %%%% a %%; \\n \\t \\r \\\\ escapes (e.g. '%%k\\t%%s\\n')",
    )
    shape.add_argument(
        "--output",
        choices=["value", "json"],
        default="value",
        help="value: each value and a newline (default); json: one JSON object per "
        "record per line (topic, partition, offset, timestamp_ms, key, value, headers)",
    )
    _add_bootstrap(c)

    s = sub.add_parser("status", help="brokers, controller and partitions")
    _add_bootstrap(s)
    _add_output(s)

    g = sub.add_parser(
        "group", help="list, describe, reset the offsets of, or delete consumer groups"
    )
    gsub = g.add_subparsers(dest="group_command", metavar="ACTION", required=True)
    _add_bootstrap(gsub.add_parser("list", help="list consumer groups"))
    gd = gsub.add_parser(
        "describe", help="members, assignments, committed offsets and lag of a group"
    )
    gd.add_argument("name")
    _add_bootstrap(gd)
    gr = gsub.add_parser(
        "reset-offsets",
        help="set a stopped group's committed offsets on every partition of a topic",
        description="Commit new offsets for GROUP on every partition of --topic. Refused "
        "while the group has members: stop its consumers first.",
    )
    gr.add_argument("name", metavar="GROUP")
    gr.add_argument("--topic", required=True)
    to = gr.add_mutually_exclusive_group(required=True)
    to.add_argument("--to-earliest", action="store_true", help="each partition's log start")
    to.add_argument("--to-latest", action="store_true", help="each partition's end (hwm)")
    to.add_argument(
        "--to-offset",
        type=_non_negative_int,
        metavar="N",
        help="offset N on every partition (clamped to each partition's [log start, end])",
    )
    to.add_argument(
        "--to-datetime",
        metavar="ISO",
        help="the first record at or after this time, e.g. 2026-12-06T20:00:00Z "
        "(ISO 8601; no zone means UTC); the end where none is that recent",
    )
    _add_bootstrap(gr)
    gdel = gsub.add_parser(
        "delete",
        help="delete a group with no members and its committed offsets",
        description="Delete GROUP and its committed offsets. Refused while it has members.",
    )
    gdel.add_argument("name", metavar="GROUP")
    _add_bootstrap(gdel)
    _add_group_output(gsub)
    _add_partition_parser(sub)
    _add_cluster_parser(sub)
    _add_acl_parsers(sub)
    _add_quota_parsers(sub)
    return parser


def _broker_ids(text: str) -> list[int]:
    try:
        ids = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a list of broker ids: {text!r}") from None
    if not ids or any(b <= 0 for b in ids):
        raise argparse.ArgumentTypeError(f"broker ids must be > 0: {text!r}")
    return ids


def _add_output(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--output",
        choices=["text", "json"],
        default="text",
        help="json: one JSON document on stdout (shapes in docs/operations.md)",
    )


def _print_json(doc: object) -> None:
    print(json.dumps(doc, indent=2, sort_keys=True))


def _add_topic_alter_parser(tsub: Any) -> None:
    ta = tsub.add_parser(
        "alter",
        help="change a topic's configs",
        description="Change a topic's configs; every replica applies them (retention at "
        "its next check, segment_bytes from its next segment).",
    )
    ta.add_argument("name")
    ta.add_argument(
        "--set",
        dest="settings",
        action="append",
        required=True,
        metavar="KEY=VALUE",
        help="retention_bytes, retention_ms or segment_bytes (repeatable)",
    )
    _add_bootstrap(ta)
    tp = tsub.add_parser(
        "add-partitions",
        help="grow a topic",
        description="Grow a topic to COUNT partitions (placed like a new topic's); "
        "consumer groups subscribing to it are reassigned.",
    )
    tp.add_argument("name")
    tp.add_argument("--count", type=_positive_int, required=True, help="the new total")
    _add_bootstrap(tp)


def _topic_alter(args: argparse.Namespace) -> int:
    async def go(admin: Admin) -> int:
        if args.topic_command == "add-partitions":
            doc = await admin.add_partitions(args.name, args.count)
        else:
            doc = await admin.alter_topic(args.name, _parse_configs(args.settings))
        _print_topic(doc)
        return 0

    return _run_admin(go, args)


def _add_broker_actions(b: argparse.ArgumentParser) -> None:
    """``zstream broker decommission ID``: an operator action beside running one."""
    b.add_argument(
        "action",
        nargs="?",
        choices=["decommission"],
        help="decommission: move every replica off broker ID, then remove it for good",
    )
    b.add_argument("target_id", nargs="?", type=_positive_int, metavar="ID")
    b.add_argument(
        "--bootstrap",
        metavar="HOST:PORT[,...]",
        default=os.environ.get("ZSTREAM_BOOTSTRAP", DEV_BOOTSTRAP),
        help="with an action: brokers to contact (default: $ZSTREAM_BOOTSTRAP, else "
        f"{DEV_BOOTSTRAP})",
    )
    _add_credentials(b)


def _decommission(args: argparse.Namespace) -> int:
    if args.target_id is None:
        raise UserError("decommission needs the broker ID")

    async def go(admin: Admin) -> int:
        leaving = await admin.decommission_broker(args.target_id)
        print(
            f"broker {args.target_id}: decommissioning (leaving: {_ids(leaving)}); "
            "progress in `zstream status`"
        )
        return 0

    return _run_admin(go, args)


def _add_partition_parser(sub: Any) -> None:
    pa = sub.add_parser("partition", help="move partition replicas (reassignment)")
    psub = pa.add_subparsers(dest="partition_command", metavar="ACTION", required=True)
    pr = psub.add_parser(
        "reassign",
        help="move a partition to other brokers",
        description="Record a new replica set for a partition; its leader moves the "
        "replicas there (new ones catch up as learners, then a joint configuration "
        "promotes them and removes the old). Returns at once: watch "
        "`zstream partition reassignments`.",
    )
    pr.add_argument("topic")
    pr.add_argument("partition", type=int)
    pr.add_argument(
        "--replicas",
        type=_broker_ids,
        required=True,
        metavar="ID[,ID...]",
        help="the new replica set, the preferred leader first (e.g. 1,2,4)",
    )
    _add_bootstrap(pr)
    pl = psub.add_parser("reassignments", help="list reassignments in progress")
    _add_bootstrap(pl)
    _add_output(pl)


def _add_cluster_parser(sub: Any) -> None:
    cl = sub.add_parser("cluster", help="cluster-wide operations (rebalance)")
    csub = cl.add_subparsers(dest="cluster_command", metavar="ACTION", required=True)
    cr = csub.add_parser(
        "rebalance",
        help="even out replicas and preferred leaders over the brokers",
        description="Plan moves that even out replica counts and preferred leaders "
        "(first replicas) over the live brokers, carry them out a few at a time, then "
        "move leadership back to the preferred replicas. Returns at once: watch "
        "`zstream partition reassignments` (docs/operations.md).",
    )
    cr.add_argument("--dry-run", action="store_true", help="print the plan, change nothing")
    _add_bootstrap(cr)
    _add_output(cr)


def _cluster(args: argparse.Namespace) -> int:
    async def go(admin: Admin) -> int:
        doc = await admin.rebalance(dry_run=args.dry_run)
        if args.output == "json":
            _print_json(doc)
            return 0
        verb = "would move" if args.dry_run else "moving"
        for m in doc["moves"]:
            kind = "" if set(m["replicas"]) != set(m["target"]) else " (preferred leader only)"
            print(
                f"{m['topic']}/{m['partition']}: {verb} {_ids(m['replicas'])} -> "
                f"{_ids(m['target'])}{kind}"
            )
        for t in doc["leader_transfers"]:
            print(f"{t['topic']}/{t['partition']}: leader {t['from']} -> {t['to']}")
        if not doc["moves"] and not doc["leader_transfers"]:
            print("balanced: nothing to move")
        elif not args.dry_run:
            print("progress in `zstream partition reassignments`")
        return 0

    return _run_admin(go, args)


def _add_acl_parsers(sub: Any) -> None:
    a = sub.add_parser(
        "acl",
        help="list, add or remove ACL entries",
        description="ACL entries: who may do what to which topics, groups or the cluster. "
        "With security on, what no entry allows is denied, and a deny wins over an allow.",
    )
    asub = a.add_subparsers(dest="acl_command", metavar="ACTION", required=True)
    al = asub.add_parser("list", help="list ACL entries")
    al.add_argument("--principal", help="only this principal's entries")
    al.add_argument("--resource-type", choices=[r.value for r in ResourceType])
    _add_bootstrap(al)
    for action, what in (("add", "add ACL entries"), ("remove", "remove ACL entries")):
        p = asub.add_parser(
            action,
            help=what,
            description=f"{what.capitalize()}: one per --operation, for one principal and "
            "one resource (exact matches are removed).",
        )
        p.add_argument("--principal", required=True, help="a principal name, or '*' for all")
        p.add_argument(
            "--operation",
            action="append",
            required=True,
            choices=[o.value for o in AclOperation],
            help="repeatable; admin is every operation",
        )
        where = p.add_mutually_exclusive_group(required=True)
        where.add_argument("--topic", metavar="NAME", help="a topic, or '*' for every topic")
        where.add_argument("--topic-prefix", metavar="PREFIX", help="topics named PREFIX...")
        where.add_argument("--group", metavar="NAME", help="a consumer group, or '*'")
        where.add_argument("--group-prefix", metavar="PREFIX", help="groups named PREFIX...")
        where.add_argument("--cluster", action="store_true", help="the cluster itself")
        p.add_argument("--deny", action="store_true", help="a deny entry (default: allow)")
        _add_bootstrap(p)


def _add_quota_parsers(sub: Any) -> None:
    q = sub.add_parser(
        "quota",
        help="set or list per-principal byte-rate quotas",
        description="Per-principal produce and fetch byte rates, held by each broker; a "
        "client over its quota is told to wait (THROTTLED with a throttle time).",
    )
    qsub = q.add_subparsers(dest="quota_command", metavar="ACTION", required=True)
    qs = qsub.add_parser(
        "set",
        help="replace a principal's quota",
        description="Replace PRINCIPAL's quota ('*': the default for principals without "
        "one). A rate left out is unlimited; with neither, the quota is removed.",
    )
    qs.add_argument("principal")
    qs.add_argument("--produce-bytes-per-s", type=_positive_int, metavar="N")
    qs.add_argument("--fetch-bytes-per-s", type=_positive_int, metavar="N")
    _add_bootstrap(qs)
    _add_bootstrap(qsub.add_parser("list", help="list quotas"))


# -- the commands -------------------------------------------------------------------------


def _broker(args: argparse.Namespace) -> int:
    if args.action == "decommission":
        return _decommission(args)
    from zstream.broker._metrics import configure_logging
    from zstream.broker._server import Broker, install_signal_handlers

    flags = {
        k: getattr(args, k)
        for k in (
            "broker_id",
            "data_dir",
            "client_addr",
            "peer_addr",
            "etcd_endpoints",
            "peers",
            "bootstrap_expect",
            "metrics_addr",
            "cluster_name",
            "fsync",
            "log_level",
            "curve_secret_key_file",
            "peer_keys_dir",
            "client_secret_key_file",
            "client_credentials_dir",
            "super_users",
            "insecure",
            "auto_rebalance",
        )
    }
    config: BrokerConfig = load_config(config_file=args.config, flags=flags)
    configure_logging(config.log_level, config.broker_id)

    async def serve() -> None:
        broker = Broker(config)
        install_signal_handlers(broker)
        await broker.run()

    with asyncio.Runner(loop_factory=_loop_factory()) as runner:
        runner.run(serve())
    return 0


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """``ZSTREAM_EVENT_LOOP`` = uvloop or asyncio (default: `DEFAULT_EVENT_LOOP`)."""
    if os.environ.get("ZSTREAM_EVENT_LOOP", DEFAULT_EVENT_LOOP) == "asyncio":
        return None
    import uvloop

    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory


_Client = TypeVar("_Client", ClusterClient, Admin)


def _run_client(
    make: Callable[[], _Client],
    coro_fn: Callable[[_Client], Coroutine[Any, Any, int]],
    bootstrap: str,
) -> int:
    """Run one client command: a bad bootstrap or an unreachable cluster is a one-line
    UserError, and the client is closed whatever happens."""

    async def go() -> int:
        try:
            client = make()
        except CredentialsError as exc:
            raise UserError(str(exc)) from exc
        except ValueError as exc:
            raise UserError(f"bad --bootstrap {bootstrap!r}: {exc}") from exc
        try:
            return await coro_fn(client)
        except ConnectionLostError as exc:
            raise UserError(
                f"cannot reach a broker at {bootstrap} (is `zstream dev` running?)"
            ) from exc
        finally:
            await client.close()

    return asyncio.run(go())


def _run(
    coro_fn: Callable[[ClusterClient], Coroutine[Any, Any, int]], args: argparse.Namespace
) -> int:
    return _run_client(
        lambda: ClusterClient(
            args.bootstrap,
            timeout_s=5,
            retry_for_s=10,
            credentials=args.credentials,
            server_key=args.server_key,
        ),
        coro_fn,
        args.bootstrap,
    )


def _parse_configs(items: Sequence[str]) -> dict[str, int]:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not value.strip().isdigit():
            raise UserError(f"--config {item!r}: expected KEY=INTEGER")
        out[key.strip()] = int(value)
    return out


def _print_topic(doc: dict[str, Any]) -> None:
    configs = ", ".join(f"{k}={v}" for k, v in sorted(doc["configs"].items())) or "-"
    print(
        f"topic {doc['name']}: partitions={len(doc['partitions'])} "
        f"replication_factor={doc['replication_factor']} configs={configs}"
    )
    print(f"  {'partition':>9}  {'leader':>6}  {'replicas':<10} {'hwm':>8}  {'log_start':>9}")
    for p in doc["partitions"]:
        replicas = ",".join(map(str, p["replicas"]))
        hwm = "-" if p["hwm"] is None else p["hwm"]
        start = "-" if p["log_start"] is None else p["log_start"]
        leader = "-" if p["leader"] is None else p["leader"]
        print(f"  {p['partition']:>9}  {leader:>6}  {replicas:<10} {hwm:>8}  {start:>9}")


def _topic(args: argparse.Namespace) -> int:
    if args.topic_command in ("alter", "add-partitions"):
        return _topic_alter(args)

    async def go(cluster: ClusterClient) -> int:
        action = args.topic_command
        if action == "create":
            request = CreateTopicRequest(
                args.name, args.partitions, args.replication_factor, _parse_configs(args.config)
            )
            doc = (await cluster.call_controller(request)).result
            print(
                f"created topic {args.name} with {args.partitions} partition(s), "
                f"replication factor {args.replication_factor}"
            )
            _print_topic(doc)
        elif action == "list":
            names = (await cluster.call_any(ListTopicsRequest())).result["topics"]
            if args.output == "json":
                _print_json({"topics": names})
            for name in names if args.output == "text" else ():
                print(name)
        elif action == "describe":
            doc = (await cluster.call_any(DescribeTopicRequest(args.name))).result
            reports = await _reports(cluster, await cluster.refresh())
            merged = _merge_leader_view(doc, reports)
            if args.output == "json":
                _print_json(merged)
            else:
                _print_topic(merged)
        else:
            await cluster.call_controller(DeleteTopicRequest(args.name))
            print(f"deleted topic {args.name}")
        return 0

    return _run(go, args)


def _partitions_of(cluster: ClusterClient, topic: str, only: int | None) -> list[int]:
    count = len(cluster.topic(topic)["partitions"])
    if only is None:
        return list(range(count))
    if not 0 <= only < count:
        raise UserError(f"topic {topic!r} has no partition {only} (it has {count})")
    return [only]


class _Progress:
    def __init__(self, total: int, size: int) -> None:
        self.total, self.size, self.done = total, size, 0
        self.started = time.monotonic()

    def advance(self, n: int) -> None:
        self.done += n
        elapsed = max(time.monotonic() - self.started, 1e-9)
        width = 30
        filled = width * self.done // self.total
        rate = self.done / elapsed
        mb = rate * self.size / 1e6
        sys.stderr.write(
            f"\r[{'#' * filled}{'.' * (width - filled)}] {self.done}/{self.total} records "
            f"{rate:,.0f} rec/s {mb:,.1f} MB/s"
        )
        if self.done >= self.total:
            sys.stderr.write("\n")
        sys.stderr.flush()


def _produce(args: argparse.Namespace) -> int:
    plain = args.input == "lines" and args.key_separator is None and not args.header
    if args.count is not None and not plain:
        raise UserError("--count sends synthetic values: drop --input, --key-separator, --header")
    if not plain:
        return _produce_records(args)

    async def go(cluster: ClusterClient) -> int:
        await cluster.refresh([args.topic])
        partitions = _partitions_of(cluster, args.topic, args.partition)
        acks = Acks(args.acks)
        turn = 0
        sent = 0

        async def send(values: list[bytes]) -> None:
            nonlocal turn, sent
            partition = partitions[turn % len(partitions)]
            turn += 1
            batch = storage.encode_batch([(None, v) for v in values])
            request = ProduceRequest(args.topic, partition, acks)
            await cluster.call_leader(args.topic, partition, request, [batch])
            sent += len(values)

        if args.count is not None:
            progress = _Progress(args.count, args.size)
            value = b"x" * args.size
            left = args.count
            while left:
                n = min(args.batch, left)
                await send([value] * n)
                progress.advance(n)
                left -= n
        else:
            interactive = sys.stdin.isatty()
            pending: list[bytes] = []
            while line := await asyncio.to_thread(sys.stdin.buffer.readline):
                pending.append(line.rstrip(b"\r\n"))
                if interactive or len(pending) >= args.batch:
                    await send(pending)
                    pending = []
            if pending:
                await send(pending)
        print(f"produced {sent} record(s) to {args.topic}", file=sys.stderr)
        return 0

    return _run(go, args)


def _produce_records(args: argparse.Namespace) -> int:
    """Keys, headers or JSON lines: records go through a Producer (idempotent, keys
    placed by their hash as any client places them)."""
    try:
        headers = parse_header_flags(args.header)
    except FormatError as exc:
        raise UserError(str(exc)) from exc
    separator = None
    if args.key_separator is not None:
        if not args.key_separator:
            raise UserError("--key-separator must not be empty")
        separator = args.key_separator.replace("\\t", "\t").encode()

    def parse(line: bytes) -> InputRecord | None:
        if args.input == "jsonl":
            return parse_json_line(line, headers)
        return parse_text_line(line, separator, headers)

    async def go(cluster: ClusterClient) -> int:
        await cluster.refresh([args.topic])
        count = len(_partitions_of(cluster, args.topic, None))
        _partitions_of(cluster, args.topic, args.partition)  # checks --partition
        interactive = sys.stdin.isatty()
        sent = 0
        async with Producer(
            args.bootstrap,
            acks=args.acks,
            credentials=args.credentials,
            server_key=args.server_key,
        ) as producer:
            pending = []
            number = 0
            while line := await asyncio.to_thread(sys.stdin.buffer.readline):
                number += 1
                try:
                    record = parse(line.rstrip(b"\r\n"))
                except FormatError as exc:
                    raise UserError(f"input line {number}: {exc}") from exc
                if record is None:
                    continue
                partition = args.partition if record.partition is None else record.partition
                if partition is not None and partition >= count:
                    raise UserError(
                        f"input line {number}: topic {args.topic!r} has no partition "
                        f"{partition} (it has {count})"
                    )
                pending.append(
                    producer.send(
                        args.topic,
                        record.value,
                        key=record.key,
                        headers=record.headers or None,
                        partition=partition,
                    )
                )
                if interactive or len(pending) >= args.batch:
                    for future in pending:
                        await future
                    sent += len(pending)
                    pending = []
            for future in pending:
                await future
            sent += len(pending)
        print(f"produced {sent} record(s) to {args.topic}", file=sys.stderr)
        return 0

    return _run(go, args)


_Printer = Callable[[str, int, int, int, bytes | None, bytes, Sequence[tuple[str, bytes]]], bytes]


def _printer(args: argparse.Namespace) -> _Printer:
    """How `zstream consume` writes one record (see broker/_cli_format.py)."""
    if args.format is not None:
        try:
            return Template(args.format).render
        except FormatError as exc:
            raise UserError(str(exc)) from exc
    if args.output == "json":
        return record_json
    return lambda topic, partition, offset, ts, key, value, headers: value + b"\n"


def _consume(args: argparse.Namespace) -> int:
    show = _printer(args)

    async def go(cluster: ClusterClient) -> int:
        await cluster.refresh([args.topic])
        partitions = _partitions_of(cluster, args.topic, args.partition)
        if args.group is not None:
            return await _consume_in_group(args, cluster, partitions, show)
        out = sys.stdout.buffer
        printed = 0
        positions: dict[int, int] = {}
        stop_at: dict[int, int] = {}
        for p in partitions:
            start, hwm = await partition_bounds(cluster, args.topic, p)
            positions[p] = start if args.from_beginning else hwm
            stop_at[p] = hwm
        while True:
            active = [p for p in partitions if args.follow or positions[p] < stop_at[p]]
            if not active:
                break
            wait_ms = 500 if len(active) == 1 else 0  # long-poll only when one partition is left
            for p in active:
                request = FetchRequest(args.topic, p, positions[p], max_wait_ms=wait_ms)
                reply = await cluster.call_leader(args.topic, p, request)
                for frame in reply.frames:
                    for record in storage.decode_records(frame):
                        if record.offset < positions[p]:
                            continue
                        out.write(
                            show(
                                args.topic,
                                p,
                                record.offset,
                                record.timestamp_ms,
                                record.key,
                                record.value,
                                record.headers,
                            )
                        )
                        printed += 1
                        positions[p] = record.offset + 1
                        if args.max is not None and printed >= args.max:
                            out.flush()
                            return 0
                out.flush()
            if args.follow and len(active) > 1:
                await asyncio.sleep(0.2)
        return 0

    return _run(go, args)


# Without --follow, a group member stops once what it owns is read to the end it saw
# at start, or when it has owned nothing for this long (other members hold it all).
_GROUP_IDLE_S = 10.0


async def _consume_in_group(
    args: argparse.Namespace, cluster: ClusterClient, partitions: list[int], show: _Printer
) -> int:
    if args.partition is not None:
        raise UserError("--group takes the partitions the group assigns: drop --partition")
    ends: dict[TopicPartition, int] = {}
    for p in partitions:
        ends[TopicPartition(args.topic, p)] = (await partition_bounds(cluster, args.topic, p))[1]
    out = sys.stdout.buffer
    printed = 0
    consumer = Consumer(
        args.bootstrap,
        group=args.group,
        enable_auto_commit=False,
        auto_offset_reset="earliest" if args.from_beginning else "latest",
        credentials=args.credentials,
        server_key=args.server_key,
    )
    try:
        await consumer.subscribe([args.topic])
        idle_since = time.monotonic()
        while args.max is None or printed < args.max:
            try:
                record = await asyncio.wait_for(consumer.getone(), 0.5)
            except TimeoutError:
                if args.follow:
                    continue
                owned = consumer.assignment()
                if not owned:
                    if time.monotonic() - idle_since > _GROUP_IDLE_S:
                        break
                    continue
                idle_since = time.monotonic()
                if all((consumer.position(tp) or 0) >= ends.get(tp, 0) for tp in owned):
                    break
                continue
            out.write(
                show(
                    record.topic,
                    record.partition,
                    record.offset,
                    record.timestamp_ms,
                    record.key,
                    record.value,
                    record.headers,
                )
            )
            printed += 1
        out.flush()
        await consumer.commit()
    finally:
        await consumer.close()
    return 0


async def _reports(cluster: ClusterClient, meta: dict[str, Any]) -> list[dict[str, Any]]:
    """Metadata from every live broker: each reports the partitions it leads."""
    reports = [meta]
    for b in meta["brokers"]:
        if b["alive"]:
            try:
                conn = cluster.connection(b["client_addr"])
                reports.append((await conn.call(MetadataRequest(), timeout_s=2)).result)
            except ZStreamError:
                continue
    return reports


def _merge_leader_view(topic: dict[str, Any], reports: list[dict[str, Any]]) -> dict[str, Any]:
    """The topic with each partition's leader, hwm and log start as its leader says."""
    parts = []
    for p in topic["partitions"]:
        merged = dict(p)
        for report in reports:
            for t in report["topics"]:
                if t["name"] == topic["name"] and len(t["partitions"]) > p["partition"]:
                    q = t["partitions"][p["partition"]]
                    if q["hwm"] is not None:
                        merged.update(leader=q["leader"], hwm=q["hwm"], log_start=q["log_start"])
        parts.append(merged)
    return {**topic, "partitions": parts}


def _status(args: argparse.Namespace) -> int:
    if args.output == "json":
        return _run(_status_json, args)

    async def go(cluster: ClusterClient) -> int:
        meta = await cluster.refresh()
        print("brokers:")
        for b in meta["brokers"]:
            print(
                f"  {b['id']:>3}  {b['client_addr']:<24} {'alive' if b['alive'] else 'DOWN':<5}"
                f"{_broker_role(b)}"
            )
        controller = meta.get("controller")
        print(f"controller: {'broker ' + str(controller) if controller else 'none'}")
        reports = await _reports(cluster, meta)
        print("partitions:")
        print(
            f"  {'topic':<20} {'part':>4}  {'leader':>6}  {'replicas':<10} {'hwm':>8}  {'start':>8}"
        )
        for topic in meta["topics"]:
            for p in _merge_leader_view(topic, reports)["partitions"]:
                replicas = ",".join(map(str, p["replicas"]))
                leader = "-" if p["leader"] is None else p["leader"]
                hwm = "-" if p["hwm"] is None else p["hwm"]
                start = "-" if p["log_start"] is None else p["log_start"]
                print(
                    f"  {topic['name']:<20} {p['partition']:>4}  {leader:>6}  "
                    f"{replicas:<10} {hwm:>8}  {start:>8}"
                )
        if not meta["topics"]:
            print("  (no topics)")
        await _print_reassignments(cluster)
        return 0

    return _run(go, args)


async def _status_json(cluster: ClusterClient) -> int:
    """``zstream status --output json``: metadata with each partition as its leader
    reports it, plus the reassignments in progress (None when the controller does
    not answer)."""
    meta = await cluster.refresh()
    reports = await _reports(cluster, meta)
    try:
        reply = await cluster.call_controller(ListReassignmentsRequest())
        moving: list[dict[str, Any]] | None = reply.result["reassignments"]
    except ZStreamError:
        moving = None
    _print_json(
        {
            "brokers": meta["brokers"],
            "controller": meta.get("controller"),
            "topics": [_merge_leader_view(t, reports) for t in meta["topics"]],
            "reassignments": moving,
        }
    )
    return 0


def _broker_role(b: dict[str, Any]) -> str:
    """A broker's decommission state and replica count, for `zstream status`."""
    state = b.get("state", "active")
    replicas = b.get("replicas")
    count = "" if replicas is None else f"  replicas={replicas}"
    return count + ("" if state == "active" else f"  {state.upper()}")


async def _print_reassignments(cluster: ClusterClient) -> None:
    try:
        reply = await cluster.call_controller(ListReassignmentsRequest())
    except ZStreamError as exc:
        print(f"reassignments: unknown ({exc})")
        return
    rows = reply.result["reassignments"]
    print(f"reassignments in progress: {len(rows)}")
    for line in _format_reassignments(rows) if rows else []:
        print(f"  {line}")


def _run_admin(
    coro_fn: Callable[[Admin], Coroutine[Any, Any, int]], args: argparse.Namespace
) -> int:
    return _run_client(
        lambda: Admin(
            args.bootstrap,
            timeout_s=5,
            credentials=args.credentials,
            server_key=args.server_key,
        ),
        coro_fn,
        args.bootstrap,
    )


def _tps(assignment: dict[str, list[int]]) -> str:
    return ",".join(f"{t}/{p}" for t, ps in sorted(assignment.items()) for p in ps) or "-"


def _cell(value: object) -> str:
    return "-" if value is None else str(value)


def _format_group(doc: dict[str, Any]) -> list[str]:
    """`Admin.describe_group`'s document as the lines ``zstream group describe`` prints."""
    members = doc["members"]
    lines = [f"group {doc['group']}: epoch={doc['epoch']} members={len(members)}"]
    lines.append("members:")
    if members:
        lines.append(f"  {'member':<24} {'epoch':>5}  {'session_ms':>10}  {'topics':<16} assigned")
    for m in members:
        pending = {
            t: sorted(set(ps) - set(m["assignment"].get(t, [])))
            for t, ps in m["target"].items()
            if set(ps) - set(m["assignment"].get(t, []))
        }
        waiting = f"  (waiting for release: {_tps(pending)})" if pending else ""
        lines.append(
            f"  {m['member_id']:<24} {m['member_epoch']:>5}  {m['session_timeout_ms']:>10}  "
            f"{','.join(m['topics']):<16} {_tps(m['assignment'])}{waiting}"
        )
    if not members:
        lines.append("  (no members)")
    lines.append("partitions:")
    lines.append(
        f"  {'topic':<20} {'part':>4}  {'member':<24} {'reading':<24} "
        f"{'committed':>9}  {'hwm':>8}  {'lag':>8}"
    )
    for row in doc["partitions"]:
        lines.append(
            f"  {row['topic']:<20} {row['partition']:>4}  {_cell(row['member']):<24} "
            f"{_cell(row.get('reading')):<24} "
            f"{_cell(row['committed']):>9}  {_cell(row['hwm']):>8}  {_cell(row['lag']):>8}"
        )
    if not doc["partitions"]:
        lines.append("  (none)")
    return lines


def parse_datetime_ms(text: str) -> int:
    """``--to-datetime``: ISO 8601 to milliseconds since the epoch; no zone is UTC."""
    try:
        when = datetime.datetime.fromisoformat(text)
    except ValueError:
        raise UserError(
            f"--to-datetime {text!r}: expected ISO 8601, e.g. 2026-12-06T20:00:00Z"
        ) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=datetime.UTC)
    ms = int(when.timestamp() * 1000)
    if ms < 0:
        raise UserError(f"--to-datetime {text!r} is before 1970")
    return ms


async def _reset_offsets(args: argparse.Namespace, admin: Admin) -> int:
    group, topic = args.name, args.topic
    try:
        members = (await admin.describe_group(group))["members"]
    except UnknownGroupError:
        members = []  # no such group yet: the commit creates it
    if members:
        ids = ", ".join(m["member_id"] for m in members)
        raise UserError(
            f"group {group!r} has {len(members)} member(s) ({ids}): stop its consumers "
            "before resetting its offsets"
        )
    bounds = await admin.partition_bounds(topic)
    if args.to_earliest:
        target = {p: start for p, (start, _) in bounds.items()}
    elif args.to_latest:
        target = {p: hwm for p, (_, hwm) in bounds.items()}
    elif args.to_offset is not None:
        target = {p: min(max(args.to_offset, start), hwm) for p, (start, hwm) in bounds.items()}
    else:
        target = await admin.offsets_for_time(topic, parse_datetime_ms(args.to_datetime))
    before = await admin.fetch_offsets(group, [topic])
    try:
        await admin.commit_offsets(group, {(topic, p): o for p, o in target.items()})
    except FencedMemberError as exc:
        # The controller refuses a non-member's commit into a group with members:
        # one joined since the check above. Nothing was committed.
        raise UserError(
            f"group {group!r} gained a member meanwhile: nothing was committed"
        ) from exc
    print(f"group {group}: offsets of topic {topic} reset")
    print(f"  {'partition':>9}  {'old':>9}  {'new':>9}")
    for p in sorted(target):
        old = before.get((topic, p))
        print(f"  {p:>9}  {_cell(old):>9}  {target[p]:>9}")
    return 0


def _add_group_output(gsub: Any) -> None:
    """``--output json`` on ``group list`` and ``group describe``."""
    for action in ("list", "describe"):
        _add_output(gsub.choices[action])


def _group_json(args: argparse.Namespace) -> int:
    """``group list``: {"groups": [name]}; ``group describe``: Admin.describe_group's
    document (members, offsets, and the per-partition rows with lag)."""

    async def go(admin: Admin) -> int:
        if args.group_command == "list":
            _print_json({"groups": await admin.list_groups()})
        else:
            _print_json(await admin.describe_group(args.name))
        return 0

    return _run_admin(go, args)


def _group(args: argparse.Namespace) -> int:
    if getattr(args, "output", "text") == "json" and args.group_command in ("list", "describe"):
        return _group_json(args)

    async def go(admin: Admin) -> int:
        if args.group_command == "list":
            for name in await admin.list_groups():
                print(name)
        elif args.group_command == "describe":
            for line in _format_group(await admin.describe_group(args.name)):
                print(line)
        elif args.group_command == "reset-offsets":
            return await _reset_offsets(args, admin)
        else:
            await admin.delete_group(args.name)
            print(f"deleted group {args.name}")
        return 0

    return _run_admin(go, args)


def _format_reassignments(rows: list[dict[str, Any]]) -> list[str]:
    if not rows:
        return ["no reassignments in progress"]
    lines = [f"{'topic':<20} {'part':>4}  {'replicas':<12} {'target':<12} {'adding':<8} removing"]
    for r in rows:
        lines.append(
            f"{r['topic']:<20} {r['partition']:>4}  {_ids(r['replicas']):<12} "
            f"{_ids(r['target']):<12} {_ids(r['adding']):<8} {_ids(r['removing'])}"
        )
    return lines


def _ids(ids: Sequence[int]) -> str:
    return ",".join(map(str, ids)) or "-"


def _partition(args: argparse.Namespace) -> int:
    async def go(admin: Admin) -> int:
        if args.partition_command == "reassign":
            doc = await admin.reassign_partition(args.topic, args.partition, args.replicas)
            if doc["target"] is None:
                print(f"{args.topic}/{doc['partition']}: replicas {_ids(doc['replicas'])}")
            else:
                print(
                    f"{args.topic}/{doc['partition']}: moving {_ids(doc['replicas'])} -> "
                    f"{_ids(doc['target'])}"
                )
        else:
            rows = await admin.list_reassignments()
            if args.output == "json":
                _print_json({"reassignments": rows})
            for line in _format_reassignments(rows) if args.output == "text" else ():
                print(line)
        return 0

    return _run_admin(go, args)


def _acl_entries(args: argparse.Namespace) -> list[AclEntry]:
    if args.cluster:
        rtype, pattern, name = ResourceType.CLUSTER, PatternType.LITERAL, CLUSTER_RESOURCE
    else:
        rtype = ResourceType.TOPIC if args.topic or args.topic_prefix else ResourceType.GROUP
        prefix = args.topic_prefix or args.group_prefix
        pattern = PatternType.LITERAL if prefix is None else PatternType.PREFIXED
        name = prefix if prefix is not None else args.topic or args.group
    permission = AclPermission.DENY if args.deny else AclPermission.ALLOW
    return [
        AclEntry(args.principal, rtype, pattern, name, AclOperation(op), permission)
        for op in dict.fromkeys(args.operation)
    ]


def _acl(args: argparse.Namespace) -> int:
    entries = [] if args.acl_command == "list" else _acl_entries(args)

    async def go(admin: Admin) -> int:
        if args.acl_command == "list":
            for entry in await admin.list_acls(args.principal, args.resource_type):
                print(entry.describe())
        elif args.acl_command == "add":
            added = await admin.add_acls(entries)
            print(f"added {added} of {len(entries)} entries ({len(entries) - added} were there)")
        else:
            removed = await admin.remove_acls(entries)
            print(f"removed {removed} of {len(entries)} entries")
        return 0

    return _run_admin(go, args)


def _quota(args: argparse.Namespace) -> int:
    def rate(value: int | None) -> str:
        return "unlimited" if value is None else f"{value} B/s"

    async def go(admin: Admin) -> int:
        if args.quota_command == "set":
            await admin.set_quota(
                args.principal,
                produce_bytes_per_s=args.produce_bytes_per_s,
                fetch_bytes_per_s=args.fetch_bytes_per_s,
            )
            print(
                f"{args.principal} produce={rate(args.produce_bytes_per_s)} "
                f"fetch={rate(args.fetch_bytes_per_s)}"
            )
        else:
            for q in await admin.list_quotas():
                print(
                    f"{q.principal} produce={rate(q.produce_bytes_per_s)} "
                    f"fetch={rate(q.fetch_bytes_per_s)}"
                )
        return 0

    return _run_admin(go, args)


def _dev(args: argparse.Namespace) -> int:
    from zstream.broker._dev import run_dev

    code: int = run_dev(
        args.data_dir or default_dev_data_dir(), args.brokers, args.port_base, secure=args.secure
    )
    return code


def _keys(args: argparse.Namespace) -> int:
    from zstream.broker._keys import KeyGenerationError, generate_key_pair

    try:
        public, secret = generate_key_pair(args.name, args.out, force=args.force)
    except KeyGenerationError as exc:
        raise UserError(str(exc)) from exc
    print(f"public key {public}")
    print(f"secret key {secret} (mode 0600: keep it on the machine that uses it)")
    return 0


_COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "broker": _broker,
    "dev": _dev,
    "keys": _keys,
    "topic": _topic,
    "produce": _produce,
    "consume": _consume,
    "status": _status,
    "group": _group,
    "partition": _partition,
    "cluster": _cluster,
    "acl": _acl,
    "quota": _quota,
}


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    try:
        return _COMMANDS[args.command](args)
    except (UserError, ConfigError, ZStreamError) as exc:
        print(f"zstream {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    sys.exit(main())
