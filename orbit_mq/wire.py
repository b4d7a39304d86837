"""The wire format (docs/protocol.md) in one place, for the SDK and the endpoint alike: the
properties of every message we publish, and the encoding and decoding of requests, replies,
batches and events. Part of the broker seam (see broker.py): no other module builds AMQP
properties or splices reply bodies.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import aiormq
import orjson
from aiormq.abc import DeliveredMessage
from pydantic import ValidationError

from orbit_mq.errors import InvalidRequest, RemoteError, from_error_info, to_error_info
from orbit_mq.protocol import (
    BATCH_TYPE,
    CONTENT_TYPE,
    DISCOVER_TYPE,
    HEADER_DEADLINE,
    HEADER_PROTOCOL,
    HEADER_SESSION,
    PROTOCOL_VERSION,
    REPLY_TO,
    BatchRequest,
    ErrorInfo,
)

Properties = aiormq.spec.Basic.Properties
PERSISTENT = 2


# -- requests ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Request:
    """The parts of a request message the endpoint reads."""

    body: bytes
    method: str | None
    user: str | None
    reply_to: str | None
    correlation_id: str | None = None
    message_id: str | None = None
    session: str | None = None
    deadline_ms: int | None = None
    protocol: str | None = None

    @classmethod
    def of(cls, message: DeliveredMessage) -> Request:
        properties = message.header.properties
        headers = properties.headers or {}
        return cls(
            body=message.body,
            method=properties.message_type,
            user=properties.user_id,
            reply_to=properties.reply_to,
            correlation_id=properties.correlation_id,
            message_id=properties.message_id,
            session=_text(headers.get(HEADER_SESSION)),
            deadline_ms=_deadline(headers.get(HEADER_DEADLINE)),
            protocol=_text(headers.get(HEADER_PROTOCOL)),
        )


def _text(value: Any) -> str | None:
    if value is None:
        return None
    return value.decode() if isinstance(value, bytes) else str(value)


def _deadline(value: Any) -> int | None:
    """The orbit-deadline header (an integer, or a string of digits); None when malformed."""
    try:
        return int(value) if value is not None else None
    except (TypeError, ValueError):
        return None


def request_properties(
    *,
    method: str,
    correlation_id: str,
    message_id: str,
    user: str,
    deadline: float,
    session: str | None,
    persistent: bool,
) -> Properties:
    """A request's properties and headers; `deadline` is a `time.time()` value."""
    headers: dict[str, Any] = {
        HEADER_PROTOCOL: PROTOCOL_VERSION,
        HEADER_DEADLINE: int(deadline * 1000),
    }
    if session:
        headers[HEADER_SESSION] = session
    return Properties(
        content_type=CONTENT_TYPE,
        correlation_id=correlation_id,
        reply_to=REPLY_TO,
        message_id=message_id,
        message_type=method,
        user_id=user,
        expiration=str(max(int((deadline - time.time()) * 1000), 1)),
        delivery_mode=PERSISTENT if persistent else 1,
        headers=headers,
    )


@dataclass(frozen=True)
class BatchItem:
    """One call of a batch as the SDK sends it (its parameters already JSON)."""

    id: str
    method: str
    params: bytes
    message_id: str
    deadline_ms: int
    session: str | None = None


def batch_body(items: Iterable[BatchItem]) -> bytes:
    """The body of an `orbit.batch` request (parameters spliced in, not parsed again)."""
    encoded = b",".join(
        b'{"id":%s,"method":%s,"params":%s,"message_id":%s,"deadline":%d%s}'
        % (
            orjson.dumps(item.id),
            orjson.dumps(item.method),
            item.params,
            orjson.dumps(item.message_id),
            item.deadline_ms,
            b',"session":' + orjson.dumps(item.session) if item.session else b"",
        )
        for item in items
    )
    return b'{"calls":[' + encoded + b"]}"


def parse_batch(body: bytes) -> BatchRequest:
    try:
        return BatchRequest.model_validate_json(body)
    except ValidationError as exc:
        raise InvalidRequest(f"malformed orbit.batch request: {exc.error_count()} errors") from None


def discovery_properties(user: str, window: float) -> Properties:
    return Properties(
        reply_to=REPLY_TO,
        message_type=DISCOVER_TYPE,
        content_type=CONTENT_TYPE,
        user_id=user,
        expiration=str(max(int(window * 1000), 1)),
        headers={HEADER_PROTOCOL: PROTOCOL_VERSION},
    )


# -- replies -----------------------------------------------------------------------------------


def success_body(result: bytes) -> bytes:
    """`{"ok": true, "result": …}` around a result already serialised."""
    return b'{"ok":true,"result":' + result + b"}"


def error_body(error: RemoteError) -> bytes:
    return orjson.dumps({"ok": False, "error": to_error_info(error).model_dump(mode="json")})


def batch_item(call_id: str, reply: bytes) -> bytes:
    """One BatchReplyItem: the call's reply body with its id spliced in."""
    return b'{"id":' + orjson.dumps(call_id) + b"," + reply[1:]


def batch_reply_body(items: list[bytes]) -> bytes:
    return b'{"replies":[' + b",".join(items) + b"]}"


def outcome(reply: Any, plugin: str | None) -> Any:
    """The result a reply object carries, or the RemoteError it names (the most specific class
    known for `plugin`)."""
    if not isinstance(reply, dict):
        raise InvalidRequest(f"not a reply object: {type(reply).__name__}")
    if reply.get("ok") is True:
        return reply.get("result")
    raise from_error_info(ErrorInfo.model_validate(reply.get("error")), plugin)


def reply_properties(correlation_id: str | None, message_type: str | None) -> Properties:
    return Properties(
        correlation_id=correlation_id, content_type=CONTENT_TYPE, message_type=message_type
    )


def replies(body: bytes, message_type: str | None) -> Iterator[tuple[str | None, dict[str, Any]]]:
    """The replies a reply message carries: (call id, reply object); for a plain reply (or a
    batch refused as a whole) the id is None: the message's correlation_id tells."""
    try:
        decoded = orjson.loads(body)
    except orjson.JSONDecodeError:
        return  # not ours to parse: the waiting call times out
    if not isinstance(decoded, dict):
        return
    if message_type == BATCH_TYPE:
        for item in decoded.get("replies", ()):
            if isinstance(item, dict):
                yield item.pop("id", None), item
    else:
        yield None, decoded


# -- events and presence -----------------------------------------------------------------------


def event_properties(message_id: str) -> Properties:
    """Events are persistent; `message_id` is the dedupe key every copy carries."""
    return Properties(content_type=CONTENT_TYPE, delivery_mode=PERSISTENT, message_id=message_id)


def presence_properties() -> Properties:
    return Properties(content_type=CONTENT_TYPE, delivery_mode=PERSISTENT)
