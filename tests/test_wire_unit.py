"""The wire format, both sides, without a broker: what the SDK encodes the endpoint decodes,
and the other way round."""

from __future__ import annotations

import time
from types import SimpleNamespace
from typing import Any

import orjson

from orbit_mq.contracts.psij import JobNotFound
from orbit_mq.errors import from_error_info
from orbit_mq.protocol import BATCH_TYPE, PROTOCOL_VERSION, REPLY_TO, ErrorInfo
from orbit_mq.wire import (
    BatchItem,
    Request,
    batch_body,
    batch_item,
    batch_reply_body,
    error_body,
    parse_batch,
    replies,
    request_properties,
    success_body,
)


def delivered(body: bytes, properties: Any) -> Any:
    """What aiormq hands a consumer: body and header properties."""
    return SimpleNamespace(body=body, header=SimpleNamespace(properties=properties))


def test_a_request_reads_back_as_it_was_sent() -> None:
    deadline = time.time() + 30
    properties = request_properties(
        method="homedir",
        correlation_id="c1",
        message_id="m1",
        user="alice",
        deadline=deadline,
        session="s1",
        persistent=True,
    )
    request = Request.of(delivered(b"{}", properties))
    assert (request.method, request.user, request.reply_to) == ("homedir", "alice", REPLY_TO)
    assert (request.correlation_id, request.message_id, request.session) == ("c1", "m1", "s1")
    assert request.deadline_ms == int(deadline * 1000) and request.protocol == PROTOCOL_VERSION
    assert properties.delivery_mode == 2 and 29_000 < int(properties.expiration) <= 30_000


def test_a_batch_round_trip() -> None:
    body = batch_body(
        [
            BatchItem("a", "echo", b'{"text":"x"}', "m-a", 1000),
            BatchItem("b", "health", b"{}", "m-b", 2000, session="s"),
        ]
    )
    batch = parse_batch(body)
    assert [(c.id, c.method, c.params, c.session) for c in batch.calls] == [
        ("a", "echo", {"text": "x"}, None),
        ("b", "health", {}, "s"),
    ]
    answers = batch_reply_body(
        [batch_item("b", success_body(b'"fine"')), batch_item("a", error_body(JobNotFound("no")))]
    )
    decoded = dict(replies(answers, BATCH_TYPE))
    assert decoded["b"] == {"ok": True, "result": "fine"}
    error = from_error_info(ErrorInfo.model_validate(decoded["a"]["error"]), "psij")
    assert type(error) is JobNotFound and error.message == "no"


def test_a_plain_reply_and_garbage() -> None:
    assert list(replies(success_body(orjson.dumps([1, 2])), None)) == [
        (None, {"ok": True, "result": [1, 2]})
    ]
    assert list(replies(b"not json", None)) == []
    assert list(replies(b"[1]", None)) == []  # not a reply object
