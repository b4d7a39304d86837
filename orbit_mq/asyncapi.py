"""The AsyncAPI 3.0 document of the wire protocol (`schemas/asyncapi.yaml`): exchanges,
queues, routing keys, message properties and headers, with the payloads referring to the JSON
Schema files that `orbit_mq.schemas` writes beside it. Names come from `orbit_mq.protocol`.
"""

from __future__ import annotations

from typing import Any

from orbit_mq import protocol as p
from orbit_mq.broker import DEAD_LETTER_LIMIT

# The layout of schemas/ that the document refers to.
PLUGINS_DIR = "plugins"
EVENTS_DIR = "events"
AMQP_BINDING = "0.3.0"
SCHEMA_FORMAT = "application/schema+json;version=2020-12"
MS_SINCE_EPOCH = "milliseconds since 1970-01-01T00:00:00Z"


def _exchange(name: str, kind: str) -> dict[str, Any]:
    exchange = {"name": name, "type": kind, "durable": True, "autoDelete": False, "vhost": "/"}
    return {"amqp": {"is": "routingKey", "exchange": exchange, "bindingVersion": AMQP_BINDING}}


def _queue(name: str, *, durable: bool, exclusive: bool = False) -> dict[str, Any]:
    queue = {"name": name, "durable": durable, "exclusive": exclusive, "autoDelete": False}
    queue["vhost"] = "/"
    return {"amqp": {"is": "queue", "queue": queue, "bindingVersion": AMQP_BINDING}}


def _external(file: str) -> dict[str, Any]:
    """A payload in one of the JSON Schema files (draft 2020-12, not AsyncAPI's own dialect)."""
    return {"schemaFormat": SCHEMA_FORMAT, "schema": {"$ref": file}}


def _prop(required: bool, description: str, value: str | None = None) -> dict[str, Any]:
    prop: dict[str, Any] = {"required": required, "description": description}
    if value is not None:
        prop["value"] = value
    return prop


def _request_headers() -> dict[str, Any]:
    return {
        "type": "object",
        "description": "The AMQP `headers` table of a request.",
        "properties": {
            p.HEADER_PROTOCOL: {
                "type": "string",
                "description": "Protocol version the caller speaks; its major part (before the "
                "first dot) must equal the endpoint's, else the reply is invalid_request.",
                "examples": [p.PROTOCOL_VERSION],
            },
            p.HEADER_DEADLINE: {
                "type": "integer",
                "description": f"Absolute deadline, {MS_SINCE_EPOCH}; a request found past it "
                "is answered with a timeout error and not executed.",
            },
            p.HEADER_SESSION: {
                "type": "string",
                "description": "A session_id from register_session, for session-scoped calls.",
            },
        },
        "required": [p.HEADER_PROTOCOL],
    }


def _request_properties(message_type: str) -> dict[str, Any]:
    return {
        "content_type": _prop(True, "The body is JSON.", p.CONTENT_TYPE),
        "correlation_id": _prop(True, "Any string; the reply carries it back unchanged."),
        "reply_to": _prop(True, "Without it the request is dropped unanswered.", p.REPLY_TO),
        "message_id": _prop(True, "Unique per call: the idempotency key (reuse only to retry)."),
        "type": _prop(True, message_type),
        "user_id": _prop(
            True,
            "The broker user of the connection (the broker refuses any other value); "
            "a request without it is answered with unauthorized.",
        ),
        "expiration": _prop(
            False,
            "Milliseconds until the deadline, as a decimal string; an expired request is "
            f"dead-lettered to {p.DEAD_LETTER_EXCHANGE} and never answered.",
        ),
        "delivery_mode": _prop(False, "1 (transient, the default) or 2 (persistent)."),
    }


def _message(
    name: str,
    description: str,
    payload: dict[str, Any],
    properties: dict[str, Any],
    message_type: str | None = None,
    request: bool = False,
) -> dict[str, Any]:
    message: dict[str, Any] = {"name": name, "description": description}
    message["contentType"] = p.CONTENT_TYPE
    if request:
        message["headers"] = _request_headers()
    message["payload"] = payload
    if "correlation_id" in properties:
        where = "$message.header#/correlation_id"
        message["correlationId"] = {
            "description": "The correlation_id property.",
            "location": where,
        }
    binding: dict[str, Any] = {}  # no content_encoding: bodies are plain UTF-8 JSON
    if message_type:
        binding["messageType"] = message_type
    message["bindings"] = {"amqp": {**binding, "bindingVersion": AMQP_BINDING}}
    message["x-amqp-properties"] = properties
    return message


def _event_message(file: str) -> str:
    """The AsyncAPI message name of an event schema file: `event.psij.job_status`."""
    return "event." + file.removeprefix(EVENTS_DIR + "/").removesuffix(".json")


def _messages(plugins: list[str], events: list[str]) -> dict[str, Any]:
    where = ", ".join(f"{PLUGINS_DIR}/{name}.json" for name in plugins) or "none installed"
    params = "The method's named parameters; their schema is in the plugin's `describe` answer "
    params += f"and in plugins/<plugin>.json ({where})."
    json_body = {"content_type": _prop(True, "The body is JSON.", p.CONTENT_TYPE)}
    reply = {**json_body, "correlation_id": _prop(True, "The request's correlation_id.")}
    batch = p.BATCH_TYPE
    batch_reply = {**reply, "type": _prop(True, "Marks a batch reply.", batch)}
    discover = {
        "reply_to": _prop(True, "Where the answers go.", p.REPLY_TO),
        "type": _prop(True, "Marks a discovery request.", p.DISCOVER_TYPE),
        "expiration": _prop(False, "The collection window, ms, as a decimal string."),
    }
    dead = {"headers": _prop(True, "The original headers plus the broker's `x-death`.")}
    event_body = {
        **json_body,
        "message_id": _prop(
            True,
            "The event's dedupe key (also `id` in the body): a copy published again after a "
            "lost confirm carries the same one.",
        ),
        "delivery_mode": _prop(True, "Persistent.", "2"),
    }
    specs: dict[str, tuple[Any, ...]] = {
        "request": (
            "One call of one method of one plugin.",
            {"type": "object", "description": params},
            _request_properties("The method name, e.g. `health`."),
            None,
            True,
        ),
        "batchRequest": (
            "Several calls to one plugin in one message (an optional extension).",
            _external("batch-request.json"),
            _request_properties(f"Always `{batch}`."),
            batch,
            True,
        ),
        "discover": (
            "Asks every live endpoint for its EndpointInfo.",
            {"type": "object", "description": "Always `{}`."},
            discover,
            p.DISCOVER_TYPE,
        ),
        "reply": ("The answer to one plain request.", _external("reply.json"), reply),
        "batchReply": (
            "Answers to some calls of a batch; every call is answered, maybe over several.",
            _external("batch-reply.json"),
            batch_reply,
            batch,
        ),
        "endpointInfo": (
            "An endpoint's presence announcement, or its answer to discovery.",
            _external("endpoint-info.json"),
            json_body,
        ),
        "event": (
            "Something happened on an endpoint (any topic; the topics with a schema of their "
            "own are the event.* messages).",
            _external("event.json"),
            event_body,
        ),
        **{
            _event_message(file): (
                f"The `{file.removeprefix(EVENTS_DIR + '/').removesuffix('.json')}` event.",
                _external(file),
                event_body,
            )
            for file in events
        },
        "deadLetter": (
            "A request that expired in its queue or was rejected without requeueing.",
            {"description": "The original request body, unchanged."},
            dead,
        ),
    }
    return {name: _message(name, *spec) for name, spec in specs.items()}


def _channels(plugins: list[str], events: list[str]) -> dict[str, Any]:
    endpoint = {"description": f"Endpoint name (pattern {p.NAME_PATTERN})."}
    installed = ", ".join(plugins)
    plugin = {"description": f"Plugin name (same pattern); installed here: {installed}."}
    status = {"description": "Presence status.", "enum": [str(s) for s in p.PresenceStatus]}
    topic = {"description": "Event topic, e.g. session_status, job_status, job_output."}
    msg = "#/components/messages/"

    def refs(*names: str) -> dict[str, Any]:
        return {name: {"$ref": msg + name} for name in names}

    return {
        "requests": {
            "address": p.request_key("{endpoint}", "{plugin}"),
            "description": f"Requests to one plugin of one endpoint, via {p.RPC_EXCHANGE}.",
            "parameters": {"endpoint": endpoint, "plugin": plugin},
            "messages": refs("request", "batchRequest"),
            "bindings": _exchange(p.RPC_EXCHANGE, "direct"),
        },
        "requestQueue": {
            "address": p.request_queue("{endpoint}", "{plugin}"),
            "description": "The endpoint's durable queue for one plugin (arguments "
            f"x-dead-letter-exchange={p.DEAD_LETTER_EXCHANGE}, x-queue-type classic or quorum). "
            "A passive queue.declare tells whether it exists and its consumer_count whether "
            "the endpoint serves it.",
            "parameters": {"endpoint": endpoint, "plugin": plugin},
            "messages": refs("request", "batchRequest"),
            "bindings": _queue(p.request_queue("{endpoint}", "{plugin}"), durable=True),
        },
        "discovery": {
            "address": p.DISCOVER_KEY,
            "description": f"Every live endpoint binds a private queue to {p.RPC_EXCHANGE} "
            "with this key.",
            "messages": refs("discover"),
            "bindings": _exchange(p.RPC_EXCHANGE, "direct"),
        },
        "replies": {
            "address": p.REPLY_TO,
            "description": "RabbitMQ direct reply-to: consume it with no-ack on the channel "
            "that publishes the requests, before publishing.",
            "messages": refs("reply", "batchReply", "endpointInfo"),
            "bindings": _queue(p.REPLY_TO, durable=False, exclusive=True),
        },
        "events": {
            "address": p.word_event_key("{endpoint}", "{plugin}", "{topic}", "{owner}"),
            "description": f"Events on the topic exchange {p.EVENTS_EXCHANGE}, each about one "
            "broker user's work, whose owner word ends the key; bind a queue with four words "
            "ending in your own, such as `hpc1.*.session_status.alice` or `*.*.*.alice` (the "
            "broker refuses other users' keys). Audit events go under "
            f"`{p.audit_key('{endpoint}')}`, for users granted all events.",
            "parameters": {
                "endpoint": endpoint,
                "plugin": plugin,
                "topic": topic,
                "owner": {
                    "description": "The owner's broker user name, with every character but "
                    "letters, digits, '@', '+', '_' and '-' (and a leading '_') %XX-encoded."
                },
            },
            "messages": refs("event", *(_event_message(file) for file in events)),
            "bindings": _exchange(p.EVENTS_EXCHANGE, "topic"),
        },
        "presence": {
            "address": p.presence_key("{endpoint}", "{status}"),
            "description": f"Presence on the topic exchange {p.TOPOLOGY_EXCHANGE}.",
            "parameters": {"endpoint": endpoint, "status": status},
            "messages": refs("endpointInfo"),
            "bindings": _exchange(p.TOPOLOGY_EXCHANGE, "topic"),
        },
        "deadLetters": {
            "address": p.DEAD_LETTER_QUEUE,
            "description": f"Fanout exchange {p.DEAD_LETTER_EXCHANGE} and its durable queue "
            f"{p.DEAD_LETTER_QUEUE} (x-max-length {DEAD_LETTER_LIMIT}, x-overflow drop-head).",
            "messages": refs("deadLetter"),
            "bindings": _queue(p.DEAD_LETTER_QUEUE, durable=True),
        },
    }


def _operation(
    action: str,
    channel: str,
    messages: list[str],
    summary: str,
    reply: list[str] | None = None,
    bindings: dict[str, Any] | None = None,
) -> dict[str, Any]:
    op: dict[str, Any] = {
        "action": action,
        "channel": {"$ref": f"#/channels/{channel}"},
        "summary": summary,
        "messages": [{"$ref": f"#/channels/{channel}/messages/{m}"} for m in messages],
    }
    if bindings:
        op["bindings"] = {"amqp": {**bindings, "bindingVersion": AMQP_BINDING}}
    if reply:
        op["reply"] = {
            "channel": {"$ref": "#/channels/replies"},
            "messages": [{"$ref": f"#/channels/replies/messages/{m}"} for m in reply],
        }
    return op


def _operations(events: list[str]) -> dict[str, Any]:
    request = {"mandatory": True, "deliveryMode": 1, "ack": False}
    return {
        "callMethod": _operation(
            "send", "requests", ["request"], "Call one method.", ["reply"], request
        ),
        "callBatch": _operation(
            "send", "requests", ["batchRequest"], "Call several methods.", ["batchReply"], request
        ),
        "discoverEndpoints": _operation(
            "send", "discovery", ["discover"], "Ask who is online.", ["endpointInfo"]
        ),
        "receiveEvents": _operation(
            "receive",
            "events",
            ["event", *(_event_message(file) for file in events)],
            "Follow events.",
        ),
        "receivePresence": _operation(
            "receive", "presence", ["endpointInfo"], "Follow endpoints coming and going."
        ),
        "inspectDeadLetters": _operation(
            "receive", "deadLetters", ["deadLetter"], "Read requests that expired unanswered."
        ),
    }


def asyncapi_document(plugins: list[str], events: list[str]) -> dict[str, Any]:
    security = [{"$ref": "#/components/securitySchemes/broker"}]
    server = {"protocolVersion": "0.9.1", "security": security}
    return {
        "asyncapi": "3.0.0",
        "id": "urn:orbit-mq:protocol",
        "info": {
            "title": "orbit_mq wire protocol",
            "version": p.PROTOCOL_VERSION,
            "description": "Endpoints on HPC nodes serve plugins over a RabbitMQ broker; "
            "clients call methods, follow events and presence. Described from a client's "
            "side; docs/protocol.md is the full specification.",
        },
        "defaultContentType": p.CONTENT_TYPE,
        "servers": {
            "broker": {"host": "localhost:5672", "protocol": "amqp", **server},
            "brokerTls": {"host": "localhost:5671", "protocol": "amqps", **server},
        },
        "channels": _channels(plugins, events),
        "operations": _operations(events),
        "components": {
            "messages": _messages(plugins, events),
            "securitySchemes": {
                "broker": {
                    "type": "userPassword",
                    "description": "A broker user; requests carry it again as user_id.",
                }
            },
        },
    }
