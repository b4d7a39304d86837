"""Shared fixtures: a real broker, endpoints started in-process or as processes, a connected SDK.

The broker is `ORBIT_MQ_TEST_URL`, else 127.0.0.1:5672, else a RabbitMQ container where a
Docker engine runs; with none of them the broker tests fail in CI (CI=true) and skip locally.
Every test names its endpoints uniquely, so tests run in any order and in parallel.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pika
import pytest
from broker_control import answers_amqp
from echo_plugin import Echo
from webhook_support import Receiver

import orbit_mq
from orbit_mq.config import Settings, broker_urls
from orbit_mq.contracts import installed_contracts
from orbit_mq.contracts.control import Control
from orbit_mq.contracts.psij import TERMINAL
from orbit_mq.protocol import request_queue
from orbit_mq.subscribe import Subscription
from orbit_mq.workers.endpoint import Endpoint
from orbit_mq.workers.plugin import Plugin
from orbit_mq.workers.plugins.sysinfo import SysInfo
from orbit_mq.workers.registry import load_plugins

LOCAL_URL = "amqp://guest:guest@127.0.0.1:5672/"


def _docker_broker() -> tuple[str, Callable[[], None]] | None:
    try:
        import docker  # type: ignore[import-untyped]

        docker.from_env().ping()
        from testcontainers.rabbitmq import RabbitMqContainer
    except Exception:
        return None
    container = RabbitMqContainer("rabbitmq:3.10-management").start()
    host, port = container.get_container_host_ip(), container.get_exposed_port(5672)
    return f"amqp://guest:guest@{host}:{port}/", container.stop


@pytest.fixture(scope="session")
def broker_url() -> Iterator[str]:
    explicit = os.environ.get("ORBIT_MQ_TEST_URL")
    if explicit:
        yield explicit
        return
    if answers_amqp(5672):
        yield LOCAL_URL
        return
    started = _docker_broker()
    if started is not None:
        url, stop = started
        yield url
        stop()
        return
    message = (
        "no RabbitMQ broker: set ORBIT_MQ_TEST_URL, start one on 127.0.0.1:5672 "
        "(make broker), or run where Docker works"
    )
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    """A webhook receiver on 127.0.0.1, running (a test may stop and start it)."""
    made = Receiver()
    made.start()
    yield made
    made.stop()


@pytest.fixture
def name() -> str:
    """A unique endpoint name for this test."""
    return f"t{uuid.uuid4().hex[:10]}"


@pytest.fixture
def settings(broker_url: str, tmp_path: Path) -> Settings:
    return Settings(
        url=broker_url,
        home=tmp_path / "home",
        heartbeat_interval=0.5,
        timeout=10,
        discovery_window=0.3,
        session_ttl=60,
    )


StartEndpoint = Callable[..., Awaitable[Endpoint]]


@pytest.fixture
async def start_endpoint(settings: Settings, name: str) -> AsyncIterator[StartEndpoint]:
    """Start in-process endpoints (default: this test's name with sysinfo and echo)."""
    started: list[Endpoint] = []

    async def start(
        plugins: list[type[Plugin]] | None = None, endpoint: str | None = None, **overrides: Any
    ) -> Endpoint:
        ep = Endpoint(
            endpoint or name,
            plugins if plugins is not None else [SysInfo, Echo],
            settings.model_copy(update=overrides),
        )
        await ep.start()
        started.append(ep)
        return ep

    yield start
    for ep in started:
        await ep.stop(grace=5)
    await asyncio.to_thread(delete_request_queues, settings.url, *{ep.name for ep in started})


@pytest.fixture
async def fabric(settings: Settings) -> AsyncIterator[orbit_mq.Fabric]:
    async with orbit_mq.Fabric(settings) as connected:
        yield connected


def cli_env(settings: Settings) -> dict[str, str]:
    return {
        **os.environ,
        "ORBIT_MQ_URL": settings.url,
        "ORBIT_MQ_HOME": str(settings.home),
        "ORBIT_MQ_HEARTBEAT_INTERVAL": "0.5",
        "ORBIT_MQ_DISCOVERY_WINDOW": "0.3",
        "ORBIT_MQ_CONFIG": str(settings.home / "no-config.toml"),
    }


def orbit_cli(*args: str) -> list[str]:
    return [sys.executable, "-P", "-m", "orbit_mq.cli", *args]


async def wait_online(fabric: orbit_mq.Fabric, endpoint: str, timeout: float = 20) -> None:
    """Wait until `endpoint` answers discovery (bounded by `timeout`)."""
    async with asyncio.timeout(timeout):
        while True:
            if any(info.endpoint == endpoint for info in await fabric.endpoints(window=0.2)):
                return


@pytest.fixture
def endpoint_process(
    settings: Settings, name: str
) -> Iterator[Callable[..., subprocess.Popen[str]]]:
    """Start `orbit-mq endpoint start` processes; they are stopped (SIGTERM) after the test."""
    processes: list[subprocess.Popen[str]] = []

    def start(*extra: str, endpoint: str | None = None) -> subprocess.Popen[str]:
        process = subprocess.Popen(
            orbit_cli("endpoint", "start", "--name", endpoint or name, *extra),
            env=cli_env(settings),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        processes.append(process)
        return process

    yield start
    for process in processes:
        stop_process(process)
    delete_request_queues(settings.url, name)


def one_node(url: str) -> str:
    """The first node's URL of a URL that may name several (a cluster's): for the plain
    aio-pika and pika connections of the tests, which take one host."""
    return broker_urls(url)[0]


def _plugin_names() -> tuple[str, ...]:
    """Every request queue a test's endpoint may leave: one per installed plugin (control
    included), per alias (tasks' rhapsody), and the tests' echo plugin."""
    contracts = [contract.name for contract in installed_contracts()]
    served = load_plugins([name for name in contracts if name != Control.name])
    aliases = [alias for cls in served for alias in cls.aliases]
    return tuple(sorted({*contracts, *aliases, Echo.name}))


PLUGIN_NAMES = _plugin_names()


def delete_request_queues(url: str, *endpoints: str) -> None:
    """Delete the durable request queues a test's endpoints left on the broker (a broker
    holding thousands of them boots slowly)."""
    try:
        connection = pika.BlockingConnection(pika.URLParameters(one_node(url)))
    except pika.exceptions.AMQPError:
        return  # the broker is away: nothing to tidy
    try:
        channel = connection.channel()
        for endpoint in endpoints:
            for plugin in PLUGIN_NAMES:
                channel.queue_delete(request_queue(endpoint, plugin))
    finally:
        connection.close()


def stop_process(process: subprocess.Popen[Any], timeout: float = 15) -> None:
    """SIGTERM, then SIGKILL if it is still running after `timeout` seconds."""
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=5)


class Watcher:
    """Collects the psij events of one endpoint in the background."""

    def __init__(self, events: Subscription[orbit_mq.Event]) -> None:
        self.status: dict[str, list[dict[str, Any]]] = defaultdict(list)
        self.output: dict[str, list[dict[str, Any]]] = defaultdict(list)
        self._changed = asyncio.Event()
        self._task = asyncio.create_task(self._collect(events))

    async def _collect(self, events: Subscription[orbit_mq.Event]) -> None:
        async for event in events:
            if event.topic in ("job_status", "job_output"):  # not session_status
                target = self.status if event.topic == "job_status" else self.output
                target[event.data["job_id"]].append(event.data)
                self._changed.set()

    def states(self, job_id: str) -> list[str]:
        return [event["state"] for event in self.status[job_id]]

    def ended(self, *job_ids: str) -> bool:
        return all(TERMINAL & set(self.states(job_id)) for job_id in job_ids)

    async def until(self, done: Callable[[], bool], timeout: float = 15) -> None:
        async with asyncio.timeout(timeout):
            while not done():
                self._changed.clear()
                await self._changed.wait()

    async def until_state(self, job_id: str, state: str, timeout: float = 15) -> None:
        await self.until(lambda: state in self.states(job_id), timeout)

    async def until_ended(self, *job_ids: str, timeout: float = 15) -> None:
        await self.until(lambda: self.ended(*job_ids), timeout)

    def close(self) -> None:
        self._task.cancel()


@pytest.fixture
async def watcher(fabric: orbit_mq.Fabric, name: str) -> AsyncIterator[Watcher]:
    """The psij events of this test's endpoint, collected in the background."""
    async with fabric.subscribe(f"{name}.psij.*") as events:
        collecting = Watcher(events)
        yield collecting
        collecting.close()
