"""The exception tree. Every error orbit_mq raises is an `OrbitError`.

    OrbitError
    ├── ConfigError                 bad settings or arguments, found before anything is sent
    │   ├── InvalidArguments        a call's arguments do not fit its contract
    │   └── RequestTooLarge         over the client's max_message_size
    ├── BrokerError                 talking to RabbitMQ failed
    │   ├── BrokerUnavailable  (T)  cannot connect
    │   ├── ConnectionLost     (T)  the connection dropped while a call waited
    │   ├── PublishRefused     (T)  the broker did not take a message (a negative confirm)
    │   ├── AccessRefused           the broker user lacks a permission
    │   ├── TlsError                the TLS handshake failed (untrusted CA, wrong host name)
    │   └── AdminUnavailable        neither the management API nor rabbitmqctl can be used
    ├── EndpointError
    │   ├── EndpointNotFound        nothing is bound for that endpoint/plugin
    │   └── EndpointOffline    (T)  the plugin queue exists but nobody consumes it
    ├── CallTimeout                 no reply before the caller's deadline
    ├── TaskFailed                  a task's result was asked for, and it ended FAILED
    │   └── TaskCanceled            … or CANCELED (orbit_mq.contracts.tasks.errors)
    └── RemoteError                 the endpoint answered with an error (has .code)
        ├── InvalidRequest          invalid_request
        │   └── PayloadTooLarge
        ├── NotFound                not_found
        │   ├── MethodNotFound
        │   └── SessionNotFound
        ├── Conflict                conflict
        ├── Unauthorized            unauthorized
        ├── Unavailable        (T)  unavailable
        ├── OperationTimeout        timeout (the endpoint gave up on the work)
        └── InternalError           internal

(T): also a `TransientError`: the same call may succeed later (the broker or the endpoint was
away, or busy). The SDK retries those itself only where that is safe (orbit_mq/retry.py).

Plugins raise `RemoteError` subclasses (their own too, e.g. `class JobNotFound(NotFound)`);
`to_error_info` turns them into wire errors and `from_error_info` turns wire errors back into
the most specific class the caller knows.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

from orbit_mq.protocol import ErrorCode, ErrorInfo
from orbit_mq.shorten import shorten

if TYPE_CHECKING:
    from pydantic import ValidationError


class OrbitError(Exception):
    """Root of every orbit_mq error."""


class TransientError(OrbitError):
    """Mixed into the errors after which the same call may succeed later."""


class ConfigError(OrbitError):
    pass


class InvalidArguments(ConfigError):
    """The arguments of a call do not fit the method's contract; nothing was sent."""


class RequestTooLarge(ConfigError):
    """The request is larger than the client's max_message_size; nothing was sent."""


class BrokerError(OrbitError):
    pass


class BrokerUnavailable(BrokerError, TransientError):
    pass


class ConnectionLost(BrokerError, TransientError):
    pass


class PublishRefused(BrokerError, TransientError):
    """The broker answered a publish with a negative confirm (basic.nack): a queue it routes
    to could not take the message. A quorum queue does so while its leader's node is down and
    no new leader is elected (a cluster failing over, usually well under a second)."""


class AccessRefused(BrokerError):
    pass


class TlsError(BrokerError):
    """The TLS handshake with the broker failed: its certificate is not signed by a trusted
    CA or not for the URL's host, or it refused the client's certificate. Not transient:
    the same settings fail again (orbit_mq/tls.py)."""


class AdminUnavailable(BrokerError):
    """`orbit-mq admin` found no way to administer the broker: the management API did not
    answer and rabbitmqctl cannot be used here (orbit_mq/broker_admin.py)."""


class EndpointError(OrbitError):
    def __init__(self, message: str, endpoint: str, plugin: str | None = None) -> None:
        super().__init__(message)
        self.endpoint = endpoint
        self.plugin = plugin


class EndpointNotFound(EndpointError):
    pass


class EndpointOffline(EndpointError, TransientError):
    pass


class CallTimeout(OrbitError):
    pass


class RemoteError(OrbitError):
    """An error reply. `code` is the wire code; `details` its machine-readable context."""

    code: ClassVar[ErrorCode] = ErrorCode.INTERNAL

    def __init__(self, message: str, details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = dict(details or {})


class InvalidRequest(RemoteError):
    code = ErrorCode.INVALID_REQUEST


class PayloadTooLarge(InvalidRequest):
    pass


class NotFound(RemoteError):
    code = ErrorCode.NOT_FOUND


class MethodNotFound(NotFound):
    pass


class SessionNotFound(NotFound):
    pass


class Conflict(RemoteError):
    code = ErrorCode.CONFLICT


class Unauthorized(RemoteError):
    code = ErrorCode.UNAUTHORIZED


class Unavailable(RemoteError, TransientError):
    code = ErrorCode.UNAVAILABLE


class OperationTimeout(RemoteError):
    code = ErrorCode.TIMEOUT


class InternalError(RemoteError):
    code = ErrorCode.INTERNAL


_BY_CODE: dict[ErrorCode, type[RemoteError]] = {
    ErrorCode.INVALID_REQUEST: InvalidRequest,
    ErrorCode.NOT_FOUND: NotFound,
    ErrorCode.CONFLICT: Conflict,
    ErrorCode.UNAUTHORIZED: Unauthorized,
    ErrorCode.UNAVAILABLE: Unavailable,
    ErrorCode.TIMEOUT: OperationTimeout,
    ErrorCode.INTERNAL: InternalError,
}


def invalid_params(label: str, exc: ValidationError) -> InvalidRequest:
    """The error for parameters that do not fit a method's model (`label`: plugin.method),
    as the endpoint answers it and the HTTP gateway too: `details.reason` invalid_params and
    `details.errors` one entry per problem (loc, msg, type)."""
    errors = [
        {"loc": ".".join(str(p) for p in e["loc"]), "msg": e["msg"], "type": e["type"]}
        for e in exc.errors(include_url=False, include_input=False)
    ]
    summary = "; ".join(f"{e['loc'] or '(body)'}: {e['msg']}" for e in errors[:5])
    return InvalidRequest(
        f"invalid parameters for {label}: {summary}", {"reason": "invalid_params", "errors": errors}
    )


MESSAGE_LIMIT = 1000  # characters of an error message on the wire; values in details: 200


def to_error_info(error: RemoteError) -> ErrorInfo:
    """The wire form of `error`; values a caller sent are shortened where they are echoed."""
    details = {key: shorten(value) for key, value in error.details.items()}
    details["type"] = type(error).__name__
    message = shorten(error.message, MESSAGE_LIMIT)
    return ErrorInfo(code=error.code, message=message, details=details)


# The classes a wire error may name in `details.type`: the built-in ones for every plugin
# (key None), each contract's own under its plugin's name (`Contract.errors`).
_REGISTRY: dict[tuple[str | None, str], type[RemoteError]] = {}


def register_errors(plugin: str | None, classes: tuple[type[RemoteError], ...]) -> None:
    """Let the SDK raise `classes` for errors of `plugin`; two classes of one name clash."""
    for cls in classes:
        key = (plugin, cls.__name__)
        known = _REGISTRY.get(key)
        if known is not None and known is not cls:
            where = f"plugin {plugin!r}" if plugin else "every plugin"
            raise TypeError(
                f"two remote errors named {cls.__name__} for {where}: "
                f"{known.__module__}.{known.__qualname__} and {cls.__module__}.{cls.__qualname__}"
            )
        _REGISTRY[key] = cls


register_errors(
    None,
    (*_BY_CODE.values(), PayloadTooLarge, MethodNotFound, SessionNotFound),
)


def from_error_info(info: ErrorInfo, plugin: str | None = None) -> RemoteError:
    """The most specific class registered for the error's code and `details.type` (the
    plugin's own first), or the code's base class."""
    base = _BY_CODE[info.code]
    details = dict(info.details or {})
    name = str(details.get("type", ""))
    specific = _REGISTRY.get((plugin, name)) or _REGISTRY.get((None, name))
    cls = specific if specific is not None and issubclass(specific, base) else base
    return cls(info.message, details)
