"""Several broker addresses in one setting: parsing, TLS checks per node, quorum arguments,
the one-line error for a queue declared with other arguments, and the first connection
going to the first node that answers, and a refused channel replaced (against the real
broker)."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

import aiormq
import pytest

import orbit_mq
from orbit_mq import broker
from orbit_mq.config import Settings, broker_urls, redact_url
from orbit_mq.errors import BrokerError, ConfigError
from orbit_mq.lanes import Lane
from orbit_mq.tls import check_transport, connection_urls
from orbit_mq.waiting import wait_within
from orbit_mq.workers.replies import SUSPECT_CRASHES, Replies


def test_one_url_names_several_nodes() -> None:
    urls = broker_urls("amqp://u:p@h1:5672,h2:5673,h3/vh?heartbeat=5")
    assert urls == [
        "amqp://u:p@h1:5672/vh?heartbeat=5",
        "amqp://u:p@h2:5673/vh?heartbeat=5",
        "amqp://u:p@h3/vh?heartbeat=5",
    ]
    assert broker_urls("amqp://127.0.0.1/") == ["amqp://127.0.0.1/"]


def test_an_empty_host_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="empty host"):
        broker_urls("amqp://u:p@h1,,h3/")


def test_a_list_in_the_config_file_is_one_url(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "config.toml"
    config.write_text('url = ["amqp://u:p@127.0.0.1:5701/v", "amqp://u:p@127.0.0.1:5702/v"]\n')
    config.chmod(0o600)
    monkeypatch.setenv("ORBIT_MQ_CONFIG", str(config))
    monkeypatch.delenv("ORBIT_MQ_URL", raising=False)
    assert Settings().url == "amqp://u:p@127.0.0.1:5701,127.0.0.1:5702/v"


def test_the_environment_takes_the_several_hosts_form(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ORBIT_MQ_URL", "amqp://u:p@127.0.0.1:5701,127.0.0.1:5702/")
    assert len(broker_urls(Settings().url)) == 2


def test_a_list_of_different_users_is_refused() -> None:
    with pytest.raises(ConfigError, match="more than its host"):
        Settings(url=["amqp://a:p@127.0.0.1/", "amqp://b:p@127.0.0.1:5673/"])  # type: ignore[arg-type]


def test_the_password_is_redacted_once_for_all_hosts() -> None:
    assert redact_url("amqp://u:secret@h1,h2/v") == "amqp://u:***@h1,h2/v"


def test_plain_amqp_is_checked_for_every_node() -> None:
    check_transport(Settings(url="amqp://u:p@127.0.0.1:5701,localhost:5702/"))
    with pytest.raises(ConfigError, match=r"broker\.example"):
        check_transport(Settings(url="amqp://u:p@127.0.0.1:5701,broker.example:5672/"))


def test_external_login_is_asked_of_every_node() -> None:
    settings = Settings(url="amqps://h1,h2/", auth="external", cert_file=Path("/c.pem"))
    assert [url.query.get("auth") for url in connection_urls(settings)] == ["external"] * 2


def test_quorum_request_queues_have_a_delivery_limit() -> None:
    arguments = broker.request_queue_arguments(Settings(queue_type="quorum"))
    assert arguments["x-delivery-limit"] == broker.DELIVERY_LIMIT
    assert arguments["x-dead-letter-exchange"]
    assert "x-delivery-limit" not in broker.request_queue_arguments(Settings(queue_type="classic"))


def test_inequivalent_arguments_say_what_to_do() -> None:
    error = aiormq.exceptions.ChannelPreconditionFailed(
        "PRECONDITION_FAILED - inequivalent arg 'x-queue-type' for queue 'q' in vhost '/'"
    )
    expected = pytest.raises(BrokerError, match="set queue_type to the type it has")
    with expected as raised, broker.translated("declaring q"):
        raise error
    assert "\n" not in str(raised.value)
    assert raised.value.__cause__ is error


def _dead_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port  # closed again: connecting is refused


async def test_the_first_node_that_answers_is_used(broker_url: str, tmp_path: Path) -> None:
    live = broker_urls(broker_url)[0].split("@", 1)[1].split("/", 1)[0]
    login = broker_url.split("//", 1)[1].split("@", 1)[0]
    url = f"amqp://{login}@127.0.0.1:{_dead_port()},{live}/"
    settings = Settings(url=url, home=tmp_path / "home", timeout=10)
    async with orbit_mq.Fabric(settings) as fabric:
        assert isinstance(await fabric.endpoints(), list)


async def test_no_node_answering_names_them_all(tmp_path: Path) -> None:
    url = f"amqp://guest:guest@127.0.0.1:{_dead_port()},127.0.0.1:{_dead_port()}/"
    with pytest.raises(orbit_mq.BrokerUnavailable) as raised:
        await broker.connect(Settings(url=url, home=tmp_path), "test")
    assert str(raised.value).count("127.0.0.1:") == 2


async def test_a_channel_the_broker_refused_is_replaced(settings: Settings) -> None:
    """After a nack (Lane.renew) the lane opens a new channel and closes the refused one."""
    connection = await broker.connect(settings, "test")
    lane = Lane(connection, "renewed", confirms=True, kept=True)
    try:
        refused = await lane.get(5)
        lane.renew(refused)
        renewed = await lane.get(5)
        assert renewed is not refused and not renewed.is_closed
        await wait_within(asyncio.wait([refused.closing]), 5)  # its outcome: how it closed
        assert refused.is_closed
        lane.renew(refused)  # a second nack of the old channel changes nothing
        assert await lane.get(5) is renewed
    finally:
        await lane.close()
        await connection.close()


def test_a_reply_address_is_dead_once_it_crashed_two_nodes() -> None:
    """A lone reply crashing one node (it may be one that hung and woke up alone) makes its
    address suspect; crashing a second node, or the same one SUSPECT_CRASHES times, dead."""
    replies = Replies(Settings(url="amqp://u:p@127.0.0.1:5711,127.0.0.1:5712/"), "t")
    replies._suspect("amq.rabbitmq.reply-to.live", "127.0.0.1:5711")
    assert "amq.rabbitmq.reply-to.live" not in replies._dead
    replies._suspect("amq.rabbitmq.reply-to.dead", "127.0.0.1:5711")
    replies._suspect("amq.rabbitmq.reply-to.dead", "127.0.0.1:5712")
    assert "amq.rabbitmq.reply-to.dead" in replies._dead
    for _ in range(SUSPECT_CRASHES):
        replies._suspect("amq.rabbitmq.reply-to.alone", "127.0.0.1:5711")
    assert "amq.rabbitmq.reply-to.alone" in replies._dead
