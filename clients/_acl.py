"""ACL entries and quotas: the values the Admin client, the wire protocol and the
broker's authorizer share. Pure: validation and the wire form, no matching (that
is the broker's, broker/_acl.py).

An ACL entry says: ``principal`` (a name from the broker's credentials file, or
``*`` for every authenticated principal) is allowed or denied ``operation`` on the
resources of ``resource_type`` whose name is ``name`` (``pattern`` literal; the
literal name ``*`` is every resource of that type) or starts with ``name``
(``pattern`` prefixed). Cluster entries name the one resource ``cluster``.

Wire form: a map of six strings::

    {"principal": str, "resource_type": "topic" | "group" | "cluster",
     "pattern": "literal" | "prefixed", "name": str,
     "operation": "produce" | "consume" | "create" | "delete" | "describe" | "alter"
                  | "admin",
     "permission": "allow" | "deny"}

A quota is a principal's produce and fetch byte rates (``*``: the default for every
principal without a quota of its own); None means no limit::

    {"principal": str, "produce_bytes_per_s": int | None, "fetch_bytes_per_s": int | None}
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from enum import StrEnum
from typing import Any

from zstream.clients._errors import InvalidRequestError

__all__ = [
    "ANY_PRINCIPAL",
    "CLUSTER_RESOURCE",
    "AclEntry",
    "AclOperation",
    "AclPermission",
    "PatternType",
    "QuotaLimits",
    "ResourceType",
    "validate_principal",
]

ANY_PRINCIPAL = "*"
# The name of the cluster resource (Kafka's "kafka-cluster"): there is only one.
CLUSTER_RESOURCE = "cluster"
MAX_PRINCIPAL_CHARS = 255
MAX_RESOURCE_NAME_CHARS = 249  # as topic and group names

# Principal names are credential file stems: no path separators, no spaces.
_PRINCIPAL = re.compile(r"[A-Za-z0-9._@=+-]+")
# Topic and group names (clients/_protocol.py), and so their prefixes.
_RESOURCE_NAME = re.compile(r"[A-Za-z0-9._-]+")


class ResourceType(StrEnum):
    TOPIC = "topic"
    GROUP = "group"
    CLUSTER = "cluster"


class PatternType(StrEnum):
    LITERAL = "literal"
    PREFIXED = "prefixed"


class AclOperation(StrEnum):
    """``admin`` is every operation on the resources it names (Kafka's ALL). Allowing
    any operation on a resource also allows ``describe`` on it (as Kafka does)."""

    PRODUCE = "produce"
    CONSUME = "consume"
    CREATE = "create"
    DELETE = "delete"
    DESCRIBE = "describe"
    ALTER = "alter"
    ADMIN = "admin"


class AclPermission(StrEnum):
    ALLOW = "allow"
    DENY = "deny"


def validate_principal(name: str, *, allow_any: bool = True) -> str:
    if name == ANY_PRINCIPAL and allow_any:
        return name
    if not 0 < len(name) <= MAX_PRINCIPAL_CHARS or not _PRINCIPAL.fullmatch(name):
        raise InvalidRequestError(
            f"invalid principal {name[:64]!r}: use 1-{MAX_PRINCIPAL_CHARS} of "
            "[A-Za-z0-9._@=+-]" + (", or * for every principal" if allow_any else "")
        )
    return name


def _enum(cls: type[StrEnum], field: str, value: object) -> Any:
    allowed = ", ".join(m.value for m in cls)
    if not isinstance(value, str):
        raise InvalidRequestError(f"ACL {field} must be one of: {allowed}")
    try:
        return cls(value)
    except ValueError:
        raise InvalidRequestError(f"ACL {field} {value[:32]!r} is not one of: {allowed}") from None


@dataclasses.dataclass(frozen=True, slots=True, order=True)
class AclEntry:
    principal: str
    resource_type: ResourceType
    pattern: PatternType
    name: str
    operation: AclOperation
    permission: AclPermission = AclPermission.ALLOW

    def __post_init__(self) -> None:
        # Coerce plain strings (from the CLI, from Python callers) to the enums.
        for field, cls in (
            ("resource_type", ResourceType),
            ("pattern", PatternType),
            ("operation", AclOperation),
            ("permission", AclPermission),
        ):
            object.__setattr__(self, field, _enum(cls, field, getattr(self, field)))
        if type(self.principal) is not str:
            raise InvalidRequestError("ACL principal must be a string")
        validate_principal(self.principal)
        if type(self.name) is not str:
            raise InvalidRequestError("ACL resource name must be a string")
        if self.resource_type is ResourceType.CLUSTER:
            if self.name != CLUSTER_RESOURCE or self.pattern is not PatternType.LITERAL:
                raise InvalidRequestError(
                    f"a cluster ACL names the literal resource {CLUSTER_RESOURCE!r}"
                )
        elif self.name == "*":
            if self.pattern is not PatternType.LITERAL:
                raise InvalidRequestError("'*' (every resource) is a literal name")
        elif not 0 < len(self.name) <= MAX_RESOURCE_NAME_CHARS or not _RESOURCE_NAME.fullmatch(
            self.name
        ):
            raise InvalidRequestError(
                f"invalid ACL resource name {self.name[:64]!r}: use 1-"
                f"{MAX_RESOURCE_NAME_CHARS} of [A-Za-z0-9._-], or * for all"
            )

    def to_wire(self) -> dict[str, str]:
        return {
            "principal": self.principal,
            "resource_type": self.resource_type.value,
            "pattern": self.pattern.value,
            "name": self.name,
            "operation": self.operation.value,
            "permission": self.permission.value,
        }

    @classmethod
    def from_wire(cls, doc: Mapping[str, object]) -> AclEntry:
        """Raises InvalidRequestError on anything but the six-string map."""
        try:
            return cls(
                doc["principal"],  # type: ignore[arg-type]  # checked in __post_init__
                doc["resource_type"],  # type: ignore[arg-type]
                doc["pattern"],  # type: ignore[arg-type]
                doc["name"],  # type: ignore[arg-type]
                doc["operation"],  # type: ignore[arg-type]
                doc.get("permission", AclPermission.ALLOW.value),  # type: ignore[arg-type]
            )
        except KeyError as exc:
            raise InvalidRequestError(f"ACL entry lacks {exc.args[0]!r}") from None

    def describe(self) -> str:
        """One line: ``allow alice produce topic prefixed:orders.``."""
        where = self.name if self.pattern is PatternType.LITERAL else f"{self.name}*"
        return f"{self.permission} {self.principal} {self.operation} {self.resource_type} {where}"


@dataclasses.dataclass(frozen=True, slots=True)
class QuotaLimits:
    principal: str
    produce_bytes_per_s: int | None = None
    fetch_bytes_per_s: int | None = None

    def __post_init__(self) -> None:
        if type(self.principal) is not str:
            raise InvalidRequestError("quota principal must be a string")
        validate_principal(self.principal)
        for field in ("produce_bytes_per_s", "fetch_bytes_per_s"):
            value = getattr(self, field)
            if value is not None and (type(value) is not int or value <= 0):
                raise InvalidRequestError(f"{field} must be an integer > 0, or none for no limit")

    @property
    def unlimited(self) -> bool:
        return self.produce_bytes_per_s is None and self.fetch_bytes_per_s is None

    def to_wire(self) -> dict[str, Any]:
        return {
            "principal": self.principal,
            "produce_bytes_per_s": self.produce_bytes_per_s,
            "fetch_bytes_per_s": self.fetch_bytes_per_s,
        }
