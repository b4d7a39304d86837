"""The broker seam: library exceptions leave it as OrbitErrors that say what failed."""

from __future__ import annotations

import asyncio

import aiormq
import pytest

from orbit_mq.broker import translated
from orbit_mq.errors import (
    AccessRefused,
    BrokerError,
    ConnectionLost,
    PublishRefused,
    TransientError,
)


def test_a_closed_connection_is_connection_lost() -> None:
    # What aiormq raises when a channel is opened while the robust connection is down.
    expected = "checking q: the broker connection is not open"
    with pytest.raises(ConnectionLost, match=expected), translated("checking q"):
        raise RuntimeError("<Connection: 'amqp://127.0.0.1'> closed")


def test_a_connection_closed_for_good_is_connection_lost() -> None:
    with pytest.raises(ConnectionLost), translated("publishing"):
        raise RuntimeError("Connection was not opened")


def test_other_runtime_errors_pass_through() -> None:
    with pytest.raises(RuntimeError, match="unrelated"), translated("x"):
        raise RuntimeError("unrelated")


def test_amqp_errors_are_translated_with_their_cause() -> None:
    with pytest.raises(ConnectionLost) as lost, translated("publishing"):
        raise aiormq.exceptions.ConnectionClosed(320, "CONNECTION_FORCED")
    assert isinstance(lost.value.__cause__, aiormq.exceptions.ConnectionClosed)
    with pytest.raises(AccessRefused), translated("declaring"):
        raise aiormq.exceptions.ChannelAccessRefused("ACCESS_REFUSED")
    expected = "consuming: ChannelNotFoundEntity"
    with pytest.raises(BrokerError, match=expected), translated("consuming"):
        raise aiormq.exceptions.ChannelNotFoundEntity("NOT_FOUND")


@pytest.mark.parametrize(
    "error",
    [
        aiormq.exceptions.AMQPConnectionError(
            "Server connection reset: ConnectionResetError(104, 'Connection reset by peer')"
        ),
        ConnectionResetError(104, "Connection reset by peer"),
    ],
)
def test_a_connection_reset_is_connection_lost_a_transient_error(error: Exception) -> None:
    """What a broker shutting down does to a call made in that instant: a retry is safe."""
    with pytest.raises(ConnectionLost) as lost, translated("checking q"):
        raise error
    assert isinstance(lost.value, TransientError)


def test_a_refused_login_is_access_refused_not_transient() -> None:
    with pytest.raises(AccessRefused) as refused, translated("connecting"):
        raise aiormq.exceptions.AuthenticationError("ACCESS_REFUSED")
    assert not isinstance(refused.value, TransientError)


def test_a_negative_confirm_is_publish_refused_a_transient_error() -> None:
    """What a quorum queue whose leader's node just died answers a confirmed publish with
    (aiormq raises it as a DeliveryError): nothing was queued, so a retry is safe."""
    nack = aiormq.spec.Basic.Nack(delivery_tag=7)
    with pytest.raises(PublishRefused, match="negative confirm") as refused, translated("x"):
        raise aiormq.exceptions.DeliveryError(None, nack)
    assert isinstance(refused.value, TransientError)
    assert isinstance(refused.value.__cause__, aiormq.exceptions.DeliveryError)
    with pytest.raises(BrokerError) as other, translated("x"):  # not a nack: not transient
        raise aiormq.exceptions.DeliveryError(None, aiormq.spec.Basic.Ack(delivery_tag=7))
    assert not isinstance(other.value, TransientError)


async def test_a_cancellation_by_the_library_is_connection_lost() -> None:
    """aiormq cancels an RPC waiting on a connection it gave up on (heartbeat missed): that is a
    lost connection; the task's own cancellation passes through as it is."""
    with pytest.raises(ConnectionLost, match="given up on"), translated("checking q"):
        raise asyncio.CancelledError()

    async def waiting() -> None:
        with translated("checking q"):
            await asyncio.Event().wait()

    task = asyncio.ensure_future(waiting())
    await asyncio.sleep(0)  # it waits inside translated
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
