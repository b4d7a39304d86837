"""The one seam between orbit_mq and the AMQP libraries.

Connecting, declaring the fixed topology, and translating aio-pika/aiormq exceptions into
`OrbitError`s (`raise … from`) all happen here, for the endpoint and the SDK alike; the
channels on the connection are `Lane`s (orbit_mq/lanes.py).
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import aio_pika
import aiormq
from aio_pika.abc import AbstractRobustConnection
from aiormq.connection import TCPTransportFactory, TLSTransportFactory, TransportFactory
from yarl import URL

from orbit_mq.config import Settings, redact_url
from orbit_mq.errors import (
    AccessRefused,
    BrokerError,
    BrokerUnavailable,
    ConnectionLost,
    PublishRefused,
)
from orbit_mq.lanes import quietly, spare_channel
from orbit_mq.protocol import (
    DEAD_LETTER_EXCHANGE,
    DEAD_LETTER_QUEUE,
    EVENTS_EXCHANGE,
    RPC_EXCHANGE,
    TOPOLOGY_EXCHANGE,
)
from orbit_mq.tls import check_transport, connection_urls, handshake_failed, ssl_context

# Dead letters are kept for inspection, but bounded so a flood of expired requests cannot fill
# the broker's disk.
DEAD_LETTER_LIMIT = 100_000
DOWN_SIGNS = ("closed", "not opened")  # in the RuntimeErrors of a connection that is down
DELIVERY_LIMIT = 5  # redeliveries of one request on a quorum queue before it is dead-lettered
CONNECT_TIMEOUT = 10.0  # s per broker node on the first connection

# Where to open the TCP connection instead of the URL's host and port (e.g. an SSH tunnel's
# local end); asked again before every (re)connection.
Route = Callable[[], tuple[str, int]]


def quorum_arguments(queue_type: str) -> dict[str, Any]:
    """The argument making a queue a quorum queue where `queue_type` says so; none for a
    classic one, so that a queue declared before the setting existed stays equivalent."""
    return {"x-queue-type": "quorum"} if queue_type == "quorum" else {}


def request_queue_arguments(settings: Settings) -> dict[str, Any]:
    """Arguments of every request queue; endpoint and waiting clients must declare them alike.
    A quorum queue counts deliveries: a request redelivered DELIVERY_LIMIT times (an endpoint
    that dies on it) goes to the dead letters instead of looping."""
    arguments: dict[str, Any] = {
        "x-dead-letter-exchange": DEAD_LETTER_EXCHANGE,
        "x-queue-type": settings.queue_type,
    }
    if settings.queue_type == "quorum":
        arguments["x-delivery-limit"] = DELIVERY_LIMIT
    return arguments


@contextmanager
def translated(action: str) -> Iterator[None]:
    """Re-raise broker library errors as OrbitErrors that say what failed and what to do."""
    try:
        yield
    except BrokerError:
        raise
    except asyncio.CancelledError as exc:
        if _cancelled_here():
            raise
        # aiormq cancels what waits on a connection it gives up on (a stuck one: no frames
        # within the heartbeat) instead of raising an error into it.
        raise ConnectionLost(f"{action}: the broker connection was given up on") from exc
    except aiormq.exceptions.ChannelAccessRefused as exc:
        raise AccessRefused(f"{action}: the broker refused access: {exc}") from exc
    except (
        aiormq.exceptions.ProbableAuthenticationError,
        aiormq.exceptions.AuthenticationError,
    ) as exc:
        raise AccessRefused(
            f"{action}: the broker refused the login; check user and password"
        ) from exc
    except aiormq.exceptions.ChannelPreconditionFailed as exc:
        if "inequivalent arg" not in str(exc):
            raise BrokerError(f"{action}: {exc}") from exc
        raise BrokerError(
            f"{action}: a queue exists with other arguments ({exc}); set queue_type to the "
            "type it has, or delete it (`rabbitmqctl delete_queue NAME`) to have it made anew"
        ) from exc
    except aiormq.exceptions.IncompatibleProtocolError as exc:
        raise BrokerError(f"{action}: not an AMQP 0-9-1 broker ({exc})") from exc
    except (
        aiormq.exceptions.AMQPConnectionError,  # ConnectionClosed, "connection reset", …
        aiormq.exceptions.ChannelInvalidStateError,
        ConnectionError,
    ) as exc:
        raise ConnectionLost(f"{action}: the broker connection was lost ({exc})") from exc
    except aiormq.exceptions.DeliveryError as exc:
        # A publish on a confirmed channel answered with basic.nack: not queued. On a cluster a
        # quorum queue nacks while its leader's node is down (until a new leader is elected);
        # without confirms the same message is dropped without a word (docs/scaling.md).
        if not isinstance(exc.frame, aiormq.spec.Basic.Nack):
            raise BrokerError(f"{action}: {type(exc).__name__}: {exc}") from exc
        raise PublishRefused(
            f"{action}: the broker did not take the message (negative confirm); a queue of a "
            "cluster may be failing over, so try again"
        ) from exc
    except aiormq.exceptions.AMQPError as exc:
        raise BrokerError(f"{action}: {type(exc).__name__}: {exc}") from exc
    except RuntimeError as exc:
        # aiormq and aio-pika have no exception class for "used while the connection is down":
        # they raise RuntimeError("<Connection …> closed") until the robust connection is back,
        # or "Connection/Channel was not opened" once it is closed for good.
        if not any(sign in str(exc) for sign in DOWN_SIGNS):
            raise
        raise ConnectionLost(
            f"{action}: the broker connection is not open ({exc}); after a drop it is "
            "re-established by itself, so try again"
        ) from exc


def _cancelled_here() -> bool:
    """Whether the running task itself is being cancelled (else a CancelledError came from
    the library, for an operation it cancelled)."""
    try:
        task = asyncio.current_task()
    except RuntimeError:  # no event loop
        return True
    return task is None or task.cancelling() > 0


class _CorkedWriter:
    """Sends what aiormq writes during one event-loop turn with a single socket write.

    aiormq writes every frame group separately, so a reply and its ack, or a burst of
    publishes, each cost a send(2); on virtualised hosts that syscall is the largest part
    of a call's cost (see docs/performance.md).
    """

    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self._writer = writer
        self._chunks: list[bytes] = []
        self._loop = asyncio.get_running_loop()

    def write(self, data: bytes) -> None:
        if not self._chunks:
            self._loop.call_soon(self._flush)
        self._chunks.append(data)

    def _flush(self) -> None:
        if self._chunks:
            data = b"".join(self._chunks)
            self._chunks.clear()
            if not self._writer.is_closing():
                self._writer.write(data)

    async def drain(self) -> None:
        self._flush()
        await self._writer.drain()

    def close(self) -> None:
        self._flush()
        self._writer.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._writer, name)


class _CorkedTransports(TransportFactory):
    def __init__(self, route: Route | None = None) -> None:
        self.route = route

    async def create(
        self, url: URL, **kwargs: Any
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        if self.route is not None:
            reader, writer = await _open_routed(url, self.route, **kwargs)
        else:
            plain = TLSTransportFactory() if url.scheme == "amqps" else TCPTransportFactory()
            reader, writer = await plain.create(url, **kwargs)
        return reader, _CorkedWriter(writer)  # type: ignore[return-value]


async def _open_routed(
    url: URL, route: Route, **kwargs: Any
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Connect to where `route` says; TLS still checks the certificate against the URL's host."""
    provider = kwargs.pop("ssl_context_provider", None)
    try:
        host, port = route()
        if url.scheme != "amqps" or provider is None:
            return await asyncio.open_connection(host, port, **kwargs)
        context = await provider.get_context()
        return await asyncio.open_connection(
            host, port, ssl=context, server_hostname=url.host, **kwargs
        )
    except ssl.SSLError:
        raise  # connect() says what to check; as a connection error it would look transient
    except OSError as exc:
        raise aiormq.exceptions.AMQPConnectionError(*exc.args) from exc


class _RotatingConnection(aio_pika.RobustConnection):
    """A robust connection over the nodes of a cluster: every reconnection, after a drop or
    a failed attempt, goes to the next node (aio-pika and aiormq take one host)."""

    def __init__(self, urls: list[URL], start: int, **kwargs: Any) -> None:
        self._urls = urls
        self._index = start
        super().__init__(urls[start], **kwargs)

    async def _on_connection_close(self, closing: asyncio.Future[Any]) -> None:
        # aio-pika calls this when an open connection is lost and when an attempt fails.
        if not self._close_called and len(self._urls) > 1:
            self._index = (self._index + 1) % len(self._urls)
            self.url = self._urls[self._index]
        await super()._on_connection_close(closing)


async def connect(
    settings: Settings, name: str, route: Route | None = None
) -> AbstractRobustConnection:
    """A robust connection to the first broker node that answers: it reconnects (to the next
    node, where the URL names several) and re-declares what was declared through it.

    With `route`, every (re)connection goes to the address it returns (an SSH tunnel).
    """
    check_transport(settings)  # before any name is resolved: a refusal sends nothing
    context = ssl_context(settings)
    urls = connection_urls(settings)
    failures: list[str] = []
    for start, url in enumerate(urls):  # each node once
        where = redact_url(str(url))
        try:
            return await _connect_at(urls, start, name, settings, context, route)
        except AccessRefused:
            raise
        except (OSError, TimeoutError, BrokerError) as exc:
            handshake = _ssl_error_in(exc)
            if handshake is not None:
                raise handshake_failed(
                    handshake, settings, f"connecting to {where}", url.host
                ) from exc
            failures.append(str(exc))  # it names the node
            last = exc
    raise BrokerUnavailable(
        f"cannot reach the broker ({'; '.join(failures)}); is RabbitMQ running? "
        "Set ORBIT_MQ_URL or --url to another broker"
    ) from last


async def _connect_at(
    urls: list[URL],
    start: int,
    name: str,
    settings: Settings,
    context: ssl.SSLContext | None,
    route: Route | None,
) -> AbstractRobustConnection:
    with translated(f"connecting to {redact_url(str(urls[start]))}"):
        connection = _RotatingConnection(
            urls,
            start,
            ssl_context=context,
            client_properties={"connection_name": name},
            reconnect_interval=settings.reconnect_interval,
        )
        connection.kwargs["transport_factory"] = _CorkedTransports(route)
        try:
            await connection.connect(timeout=CONNECT_TIMEOUT)
        except BaseException:
            await quietly(connection.close())
            raise
        return connection


def _ssl_error_in(error: BaseException) -> ssl.SSLError | None:
    """The TLS error behind `error` (the libraries wrap it, or re-raise it as it is)."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:  # bounded: each link once
        if isinstance(current, ssl.SSLError):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


async def declare_topology(
    channel: aiormq.abc.AbstractChannel, queue_type: str = "classic"
) -> None:
    """Declare the fixed exchanges and the dead-letter queue (idempotent; needs configure
    rights on them, which only the broker's administrators have: see docs/security.md).
    With `queue_type` quorum the dead-letter queue is one too: on a cluster a classic one
    lives on one node, and while that node is down nothing is dead-lettered."""
    arguments: dict[str, Any] = {
        "x-max-length": DEAD_LETTER_LIMIT,
        "x-overflow": "drop-head",
        **quorum_arguments(queue_type),
    }
    with translated("declaring the orbit exchanges"):
        await channel.exchange_declare(RPC_EXCHANGE, exchange_type="direct", durable=True)
        await channel.exchange_declare(EVENTS_EXCHANGE, exchange_type="topic", durable=True)
        await channel.exchange_declare(TOPOLOGY_EXCHANGE, exchange_type="topic", durable=True)
        await channel.exchange_declare(DEAD_LETTER_EXCHANGE, exchange_type="fanout", durable=True)
        await channel.queue_declare(DEAD_LETTER_QUEUE, durable=True, arguments=arguments)
        await channel.queue_bind(DEAD_LETTER_QUEUE, DEAD_LETTER_EXCHANGE)


async def _topology_exists(channel: aiormq.abc.AbstractChannel) -> bool:
    """Whether the fixed exchanges and the dead-letter queue exist (passive declares need no
    permission); a missing one closes the channel."""
    try:
        for exchange in (RPC_EXCHANGE, EVENTS_EXCHANGE, TOPOLOGY_EXCHANGE, DEAD_LETTER_EXCHANGE):
            await channel.exchange_declare(exchange, passive=True)
        await channel.queue_declare(DEAD_LETTER_QUEUE, passive=True)
    except aiormq.exceptions.ChannelNotFoundEntity as exc:
        # A classic queue of a cluster whose node is down exists: it is back with its node.
        return "home node" in str(exc)
    return True


async def ensure_topology(
    connection: AbstractRobustConnection, user: str, queue_type: str = "classic"
) -> None:
    """Make sure the fixed topology exists: checked passively, declared only where missing.

    A least-privilege user (docs/security.md) may not declare the shared exchanges, and
    need not: `orbit-mq admin` declares them when it makes the user.
    """
    with translated("checking the orbit exchanges"):
        async with spare_channel(connection, "topology check") as amqp:
            if await _topology_exists(amqp):
                return
    try:
        async with spare_channel(connection, "topology") as amqp:
            await declare_topology(amqp, queue_type)
    except AccessRefused as exc:
        raise AccessRefused(
            f"the orbit exchanges do not exist on this vhost yet and broker user {user!r} may "
            "not declare them; have a broker administrator run `orbit-mq admin endpoint add` "
            "(or any `orbit-mq admin` command that makes users), which declares them"
        ) from exc
