"""The wire contract: AMQP names, headers and the message models.

Everything a foreign client needs is named here and documented in docs/protocol.md;
the JSON Schemas in schemas/ are generated from these models (`orbit-mq schemas`).
"""

from __future__ import annotations

import functools
import re
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

PROTOCOL_VERSION = "2"
# Majors an endpoint answers. Requests and replies did not change from 1 to 2; event routing
# keys did (they name the owner), see docs/protocol.md "Versioning".
SUPPORTED_PROTOCOLS = ("1", "2")

RPC_EXCHANGE = "orbit.rpc"
EVENTS_EXCHANGE = "orbit.events"
TOPOLOGY_EXCHANGE = "orbit.topology"
DEAD_LETTER_EXCHANGE = "orbit.dlx"
DEAD_LETTER_QUEUE = "orbit.dlx"
REPLY_TO = "amq.rabbitmq.reply-to"  # endpoints answer only addresses that start with this
# Every endpoint binds a private queue to orbit.rpc with this key; a request published
# with it reaches all live endpoints at once (endpoint names cannot start with "_").
DISCOVER_KEY = "_orbit.discover"
DISCOVER_TYPE = "orbit.discover"
# A message carrying several coalesced calls to one plugin (see docs/protocol.md).
BATCH_TYPE = "orbit.batch"

HEADER_SESSION = "orbit-session"
HEADER_PROTOCOL = "orbit-protocol"
HEADER_DEADLINE = "orbit-deadline"
CONTENT_TYPE = "application/json"

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$"
_NAME_RE = re.compile(NAME_PATTERN)


def check_name(kind: str, name: str) -> str:
    """Endpoint and plugin names become routing-key words, so dots and wildcards are out."""
    if not _NAME_RE.match(name):
        raise ValueError(
            f"invalid {kind} name {name!r}: use 1-64 letters, digits, '_' or '-', "
            "starting with a letter or digit"
        )
    return name


def request_queue(endpoint: str, plugin: str) -> str:
    return f"orbit.ep.{endpoint}.{plugin}"


def request_key(endpoint: str, plugin: str) -> str:
    return f"{endpoint}.{plugin}"


def discovery_queue(endpoint: str, instance: int | str) -> str:
    """The private queue one running endpoint (`instance`: its pid) takes discovery from."""
    return f"orbit.discover.{endpoint}.{instance}"


def subscription_queue(owner: str, name: str) -> str:
    """A durable subscription's queue, named by its subscriber under their owner word (so the
    broker can give each user rights on their own queues only)."""
    return f"orbit.sub.{owner_word(owner)}.{name}"


def private_subscription_queue(token: str) -> str:
    """A non-durable subscription's queue (`token`: a uuid4 in hex), gone with its connection
    (not under orbit.sub., where a user's owner word could be `tmp`)."""
    return f"orbit.tmp.{token}"


# The owner word of events nobody owns but the endpoint's admins may read (audit events); no
# user's owner word starts with "_".
ADMINS_OWNER = "_admins"
AUDIT_PLUGIN = "_endpoint"  # the plugin word of the endpoint's own events
AUDIT_TOPIC = "audit"
# Characters an owner word keeps as they are; every other one is %XX-encoded.
_OWNER_SAFE = re.compile(r"[A-Za-z0-9@+_-]")


@functools.lru_cache(maxsize=4096)  # every event's routing key has one; few users
def owner_word(user: str) -> str:
    """The routing-key word that stands for broker user `user`: the name with every character
    that is not a letter, digit, '@', '+', '_' or '-' (and a leading '_') %XX-encoded (UTF-8),
    so that dots and wildcards cannot reshape a key and no user's word is a reserved one."""
    out = []
    for index, char in enumerate(user):
        if _OWNER_SAFE.match(char) and not (index == 0 and char == "_"):
            out.append(char)
        else:
            out.extend(f"%{byte:02X}" for byte in char.encode())
    return "".join(out) or "%"


def event_key(endpoint: str, plugin: str, topic: str, owner: str) -> str:
    """Routing key of an event about the work of broker user `owner` (protocol 2)."""
    return word_event_key(endpoint, plugin, topic, owner_word(owner))


def word_event_key(endpoint: str, plugin: str, topic: str, word: str) -> str:
    """`event_key` with the owner's word already made (or a placeholder standing for it)."""
    return f"{endpoint}.{plugin}.{topic}.{word}"


def audit_key(endpoint: str) -> str:
    """Routing key of an endpoint's audit events, readable only by users granted all events."""
    return f"{endpoint}.{AUDIT_PLUGIN}.{AUDIT_TOPIC}.{ADMINS_OWNER}"


def legacy_event_key(endpoint: str, plugin: str, topic: str) -> str:
    """Routing key of protocol 1 events (no owner), published only where an endpoint is told
    to (`legacy_events`) while old clients migrate: anyone who may bind can read them."""
    return f"{endpoint}.{plugin}.{topic}"


def owned_pattern(pattern: str, owner: str | None) -> str:
    """A binding pattern for events: `{endpoint}.{plugin}.{topic}` words (`*` for any, one `#`
    for any number), completed to the four words of protocol 2 with `owner`'s word (`None`:
    any owner, which the broker allows only to users granted all events)."""
    words = pattern.split(".")
    if words.count("#") > 1 or len(words) - words.count("#") > 3:
        raise ValueError(
            f"invalid event pattern {pattern!r}: give at most three words "
            "'{endpoint}.{plugin}.{topic}', each a name or '*', with at most one '#'"
        )
    if "#" in words:
        at = words.index("#")
        words[at : at + 1] = ["*"] * (3 - (len(words) - 1))
    if len(words) != 3:
        raise ValueError(
            f"invalid event pattern {pattern!r}: it needs three words "
            "'{endpoint}.{plugin}.{topic}' (or a '#' standing for the missing ones)"
        )
    return ".".join([*words, "*" if owner is None else owner_word(owner)])


def presence_key(endpoint: str, status: PresenceStatus | str) -> str:
    return f"{endpoint}.{status}"


class ErrorCode(StrEnum):
    """The closed set of error codes a reply may carry."""

    INVALID_REQUEST = "invalid_request"
    NOT_FOUND = "not_found"
    CONFLICT = "conflict"
    UNAUTHORIZED = "unauthorized"
    UNAVAILABLE = "unavailable"
    TIMEOUT = "timeout"
    INTERNAL = "internal"


class _Wire(BaseModel):
    # Unknown fields are ignored, not refused: within a major protocol version fields are only
    # ever added, and an older reader must still accept a newer writer's messages.
    model_config = ConfigDict(extra="ignore")


class ErrorInfo(_Wire):
    """Why a call failed."""

    code: ErrorCode
    message: str = Field(description="One human-readable line saying what went wrong.")
    details: dict[str, Any] | None = Field(
        default=None,
        description="Machine-readable context; `type` names the specific error class.",
    )


class SuccessReply(_Wire):
    ok: Literal[True] = True
    result: Any = None


class ErrorReply(_Wire):
    ok: Literal[False] = False
    error: ErrorInfo


Reply = Annotated[SuccessReply | ErrorReply, Field(discriminator="ok")]


class BatchCall(_Wire):
    """One call inside a coalesced `orbit.batch` request."""

    id: str = Field(description="The call's own correlation id; its reply carries it back.")
    method: str
    params: dict[str, Any] = Field(default_factory=dict)
    message_id: str | None = None
    session: str | None = None
    deadline: int | None = Field(default=None, description="Absolute deadline, ms since epoch.")


class BatchRequest(_Wire):
    calls: list[BatchCall] = Field(min_length=1)


class BatchReplyItem(_Wire):
    id: str
    ok: bool
    result: Any = None
    error: ErrorInfo | None = None


class BatchReply(_Wire):
    replies: list[BatchReplyItem]


def utcnow() -> datetime:
    return datetime.now(UTC)


class Event(_Wire):
    """A message on orbit.events, routing key `{endpoint}.{plugin}.{topic}.{owner}`."""

    id: str | None = Field(
        default=None,
        description="The event's dedupe key, also its AMQP message_id: a repeat of an event "
        "on the wire carries the same id (job_status: `{job_id}:{seq}`; job_output: "
        "`{job_id}:{stream}:{offset}`; session_status: `{session_id}:{status}`).",
    )
    endpoint: str
    plugin: str
    topic: str
    time: datetime = Field(default_factory=utcnow, description="When the event was journaled.")
    owner: str | None = Field(
        default=None,
        description="The broker user whose work the event is about (its routing key's last "
        "word is this name's owner word); absent from endpoint-wide events such as audit.",
    )
    data: dict[str, Any] = Field(default_factory=dict)


AuditDecision = Literal["refused", "admin_override", "stop"]


class AuditRecord(_Wire):
    """The data of an endpoint's audit event (topic `audit`): a decision that crossed users."""

    decision: AuditDecision = Field(
        description="`refused`: the call was refused; `admin_override`: an admin acted on "
        "another user's work; `stop`: an admin stopped the endpoint."
    )
    user: str = Field(description="The broker user who called.")
    method: str = Field(description="`{plugin}.{method}` of the call.")
    kind: str = Field(description="What the call named: job, session, endpoint, …")
    ids: list[str] = Field(default_factory=list, description="The objects it named (at most 20).")
    owners: list[str] = Field(default_factory=list, description="Whose they are.")
    message: str = Field(description="The line written to the endpoint's log.")


class HostRole(StrEnum):
    LOGIN = "login"
    COMPUTE = "compute"
    STANDALONE = "standalone"


class PresenceStatus(StrEnum):
    ONLINE = "online"
    HEARTBEAT = "heartbeat"
    OFFLINE = "offline"


class PluginInfo(_Wire):
    name: str
    version: str
    methods: list[str]


class EndpointInfo(_Wire):
    """Presence on orbit.topology (key `{endpoint}.{status}`); also the discovery reply."""

    endpoint: str
    status: PresenceStatus
    time: datetime = Field(default_factory=utcnow)
    protocol: str = PROTOCOL_VERSION
    version: str = Field(description="orbit_mq version of the endpoint.")
    host: str
    host_role: HostRole
    pid: int
    user: str = Field(description="The broker user the endpoint connects as.")
    started: datetime
    uptime: float = Field(description="Seconds since the endpoint started.")
    heartbeat_interval: float
    draining: bool = Field(
        False, description="A drain is under way: no requests are taken, running work ends."
    )
    plugins: list[PluginInfo]
    pool: str | None = Field(
        None,
        description="The pool this endpoint serves as a member: calls to the pool's name go to "
        "any live member (docs/scaling.md, Endpoint pools).",
    )


SessionStatus = Literal["active", "closed", "expired"]


class SessionInfo(_Wire):
    """The result of `register_session` and the data of `session_status` events."""

    session_id: str
    plugin: str
    user: str
    ttl: float = Field(description="Seconds of inactivity after which the session expires.")
    expires: datetime
    status: SessionStatus = "active"
    endpoint: str | None = Field(
        None,
        description="The endpoint holding the session: a pool member, when it was opened "
        "through a pool; the calls made in it go there.",
    )

    def event_key(self) -> str:
        """The dedupe key of the session_status event announcing this state."""
        return f"{self.session_id}:{self.status}"


class HealthInfo(_Wire):
    plugin: str
    version: str
    healthy: bool
    uptime: float
    sessions: int
    details: dict[str, Any] = Field(default_factory=dict)


WIRE_MODELS: dict[str, type[BaseModel]] = {
    "error": ErrorInfo,
    "reply-success": SuccessReply,
    "reply-error": ErrorReply,
    "batch-request": BatchRequest,
    "batch-reply": BatchReply,
    "event": Event,
    "endpoint-info": EndpointInfo,
    "session-info": SessionInfo,
    "audit-record": AuditRecord,
    "health": HealthInfo,
}
