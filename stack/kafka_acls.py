"""Service principals of the secure-mode stack: SCRAM credentials and the ACLs each one gets.

The broker runs Kafka's StandardAuthorizer with `allow.everyone.if.no.acl.found=false`, so a
principal may do exactly what is listed here and nothing else. `ledgerflow-admin` is a super
user (topics, ACLs, operator tools); every service gets the least it needs:

| principal           | may                                                                  |
|---------------------|----------------------------------------------------------------------|
| `ledgerflow-api`    | write command topics; read result topics in `ledgerflow.results.*`   |
|                     | groups (it stands in for the upstream API layer, the demo, the tests) |
| `ledgerflow-worker` | read command topics in its `ledgerflow.<flow>` group; write `*.dlq`   |
| `ledgerflow-relay`  | write result topics (`*.completed`, `*.rejected`); describe command   |
|                     | topics and worker groups (it measures every flow's consumer lag)      |

The same table, with a production's topic prefix, is what an operator applies to a real cluster
(docs/security.md). Passwords are random per stack folder, written once to
`<stack dir>/secrets/kafka-<principal>.password` (0600) and bound at storage-format time as
salted SCRAM credentials, so no password ever appears on a command line.

aiokafka 0.14's admin client has no `create_acls`; it has the wire structures up to version 1,
which Kafka 4 no longer accepts, so the flexible CreateAcls v2 request is declared here and sent
through the admin client's connection (a private method, pinned by aiokafka<0.15).
"""

from __future__ import annotations

import base64
import hashlib
import os
import secrets
from dataclasses import dataclass
from enum import IntEnum
from typing import TYPE_CHECKING, Any, ClassVar, TypeAlias

from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.protocol.api import Request, RequestStruct, Response
from aiokafka.protocol.types import (
    CompactArray,
    CompactString,
    Int8,
    Int16,
    Int32,
    Schema,
    TaggedFields,
)

from ledgerflow.contracts.topics import FLOWS
from ledgerflow.stack.process import StackError

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping
    from pathlib import Path

SCRAM_MECHANISM = "SCRAM-SHA-512"
SCRAM_ITERATIONS = 8192  # Kafka's minimum is 4096; a client pays it once per connection
SCRAM_SALT_BYTES = 32
PASSWORD_BYTES = 24

ADMIN = "ledgerflow-admin"
API = "ledgerflow-api"
WORKER = "ledgerflow-worker"
RELAY = "ledgerflow-relay"
SERVICES = (API, WORKER, RELAY)
PRINCIPALS = (ADMIN, *SERVICES)
RESULTS_GROUP_PREFIX = "ledgerflow.results."  # harness.results.ResultCollector's groups
ACL_TIMEOUT_MS = 15_000


class ResourceType(IntEnum):  # org.apache.kafka.common.resource.ResourceType
    TOPIC = 2
    GROUP = 3


class PatternType(IntEnum):  # org.apache.kafka.common.resource.PatternType
    LITERAL = 3
    PREFIXED = 4


class Operation(IntEnum):  # org.apache.kafka.common.acl.AclOperation
    READ = 3  # implies DESCRIBE
    WRITE = 4  # implies DESCRIBE; also enough for an idempotent producer (KIP-679)
    DESCRIBE = 8  # metadata, offsets and committed offsets; no data


ALLOW = 3  # AclPermissionType.ALLOW
ANY_HOST = "*"


@dataclass(frozen=True, order=True)
class Acl:
    principal: str  # a user name; the wire form is User:<name>
    resource_type: ResourceType
    resource_name: str
    pattern_type: PatternType
    operation: Operation


def service_acls(topic_prefix: str = "") -> list[Acl]:
    """The ACLs of every service principal for the contract's topics under `topic_prefix`.

    Worker groups are `<prefix>ledgerflow.<flow>` (workers.app.group_id).
    """
    topic, group = ResourceType.TOPIC, ResourceType.GROUP
    literal, prefixed = PatternType.LITERAL, PatternType.PREFIXED
    read, write, describe = Operation.READ, Operation.WRITE, Operation.DESCRIBE
    acls = [Acl(API, group, topic_prefix + RESULTS_GROUP_PREFIX, prefixed, read)]
    for flow in FLOWS:
        command = topic_prefix + flow.command_topic
        worker_group = f"{topic_prefix}ledgerflow.{flow.name}"
        acls += [
            Acl(API, topic, command, literal, write),
            Acl(WORKER, topic, command, literal, read),
            Acl(WORKER, group, worker_group, literal, read),
            Acl(WORKER, topic, topic_prefix + flow.dlq_topic, literal, write),
            Acl(RELAY, topic, command, literal, describe),
            Acl(RELAY, group, worker_group, literal, describe),
        ]
        for result in flow.result_topics:
            acls += [
                Acl(RELAY, topic, topic_prefix + result, literal, write),
                Acl(API, topic, topic_prefix + result, literal, read),
            ]
    return sorted(set(acls))


# --- SCRAM credentials -------------------------------------------------------------------------


def password_file(stack_dir: Path, principal: str) -> Path:
    return stack_dir / "secrets" / f"kafka-{principal}.password"


def ensure_passwords(stack_dir: Path, principals: Iterable[str] = PRINCIPALS) -> dict[str, Path]:
    """A random password per principal, created once (0600) and reused on every start."""
    folder = stack_dir / "secrets"
    folder.mkdir(parents=True, exist_ok=True)
    folder.chmod(0o700)
    files: dict[str, Path] = {}
    for principal in principals:
        path = password_file(stack_dir, principal)
        if not path.is_file():
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w", encoding="ascii") as handle:
                handle.write(secrets.token_urlsafe(PASSWORD_BYTES) + "\n")
        files[principal] = path
    return files


def read_password(path: Path) -> str:
    return path.read_text(encoding="ascii").strip()


def scram_argument(name: str, password: str, salt: bytes | None = None) -> str:
    """StorageTool's `--add-scram` value with a salted password (RFC 5802 SaltedPassword).

    Kafka keeps only the salted form; passing it instead of the password keeps the password
    out of /proc/<pid>/cmdline, which any local user can read.
    """
    salt = salt if salt is not None else secrets.token_bytes(SCRAM_SALT_BYTES)
    salted = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, SCRAM_ITERATIONS)
    b64 = base64.b64encode
    return (
        f'{SCRAM_MECHANISM}=[name={name},salt="{b64(salt).decode()}",'
        f'saltedpassword="{b64(salted).decode()}",iterations={SCRAM_ITERATIONS}]'
    )


# --- CreateAcls v2 (flexible versions; Kafka 4 accepts v2 and v3) -------------------------------


# aiokafka ships no type information: its base classes are Any to mypy.
class _CreateAclsResponseV2(Response):  # type: ignore[misc]
    API_KEY = 30
    API_VERSION = 2
    SCHEMA = Schema(
        ("throttle_time_ms", Int32),
        (
            "results",
            CompactArray(
                ("error_code", Int16),
                ("error_message", CompactString("utf-8")),
                ("tags", TaggedFields),
            ),
        ),
        ("tags", TaggedFields),
    )


class _CreateAclsRequestV2(RequestStruct):  # type: ignore[misc]
    FLEXIBLE_VERSION = True
    API_KEY = 30
    API_VERSION = 2
    RESPONSE_TYPE = _CreateAclsResponseV2
    SCHEMA = Schema(
        (
            "creations",
            CompactArray(
                ("resource_type", Int8),
                ("resource_name", CompactString("utf-8")),
                ("resource_pattern_type", Int8),
                ("principal", CompactString("utf-8")),
                ("host", CompactString("utf-8")),
                ("operation", Int8),
                ("permission_type", Int8),
                ("tags", TaggedFields),
            ),
        ),
        ("tags", TaggedFields),
    )


_CreateAclsStruct: TypeAlias = _CreateAclsRequestV2


class CreateAcls(Request[_CreateAclsStruct]):  # type: ignore[misc]
    API_KEY: ClassVar[int] = 30

    def __init__(self, acls: Iterable[Acl]) -> None:
        self._creations: list[tuple[Any, ...]] = [
            (
                int(acl.resource_type), acl.resource_name, int(acl.pattern_type),
                f"User:{acl.principal}", ANY_HOST, int(acl.operation), ALLOW, {},
            )
            for acl in acls
        ]  # fmt: skip

    def build(self, request_struct_class: type[_CreateAclsStruct]) -> _CreateAclsStruct:
        return request_struct_class(self._creations, {})


async def create_acls(
    bootstrap_servers: str, acls: Iterable[Acl], client_options: Mapping[str, Any]
) -> None:
    """Create `acls` (creating an existing ACL is a no-op) as a super user; raise on any error."""
    wanted = list(acls)
    admin = AIOKafkaAdminClient(
        bootstrap_servers=bootstrap_servers,
        request_timeout_ms=ACL_TIMEOUT_MS,
        client_id="ledgerflow-stack-acls",
        **client_options,
    )
    await admin.start()
    try:
        response = await admin._send_request(CreateAcls(wanted))  # noqa: SLF001 - see module doc
    finally:
        await admin.close()
    failed = [
        f"{acl}: error {code} {message or ''}".strip()
        for acl, (code, message, _tags) in zip(wanted, response.results, strict=True)
        if code != 0
    ]
    if failed:
        raise StackError("creating Kafka ACLs failed:\n" + "\n".join(failed))
