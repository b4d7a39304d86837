"""Least privilege on a real broker: users made by `orbit-mq admin` can do their own work and
nothing of anyone else's, and `admin check` tells a narrow user from a broad one.

Each test runs in a vhost of its own, with uniquely named users; both are deleted after it.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiormq
import pytest
from broker_users import scratch_vhost
from conftest import orbit_cli, stop_process, wait_online

import orbit_mq
from orbit_mq import admin
from orbit_mq.broker import request_queue_arguments
from orbit_mq.broker_admin import Accounts, ManagementApi, Rabbitmqctl, open_accounts, vhost_of
from orbit_mq.config import Settings
from orbit_mq.errors import AdminUnavailable
from orbit_mq.permissions import Rights, Role, grant_for
from orbit_mq.protocol import (
    DEAD_LETTER_QUEUE,
    EVENTS_EXCHANGE,
    RPC_EXCHANGE,
    TOPOLOGY_EXCHANGE,
    PresenceStatus,
    event_key,
    presence_key,
    request_key,
    request_queue,
)
from orbit_mq.proxy import remote
from orbit_mq.wire import event_properties, presence_properties
from orbit_mq.workers.endpoint import Endpoint
from orbit_mq.workers.plugins.sysinfo import SysInfo

pytestmark = pytest.mark.single_node  # its users, made on the local node

Refused = aiormq.exceptions.ChannelAccessRefused
Action = Callable[[aiormq.abc.AbstractChannel], Awaitable[Any]]


@dataclass
class Fabric:
    """One test's vhost: its administrator's settings and the users made in it."""

    accounts: Accounts
    settings: Settings
    users: list[str] = field(default_factory=list)

    def unique(self, prefix: str) -> str:
        return f"{prefix}{uuid.uuid4().hex[:8]}"

    async def make(
        self, role: Role, name: str | None = None, pool: str | None = None
    ) -> admin.NewUser:
        name = name or self.unique("u")
        made = await admin.add_user(self.accounts, self.settings, role, name, pool=pool)
        self.users.append(made.name)
        return made

    async def make_raw(self, name: str, rights: Rights, tags: tuple[str, ...] = ()) -> None:
        """A user with the given rights, as an administrator might make one by hand."""
        await self.accounts.add_user(name, "pw-" + name, tags)
        self.users.append(name)
        await self.accounts.set_rights(vhost_of(self.settings.url), name, rights)


async def accounts_for(broker_url: str, backend: str) -> Accounts:
    """The management API, or rabbitmqctl as the fallback when the API does not answer."""
    kind = Rabbitmqctl if backend == "rabbitmqctl" else ManagementApi
    unreachable = "http://127.0.0.1:1" if backend == "rabbitmqctl" else None
    try:
        accounts = await open_accounts(broker_url, management_url=unreachable)
    except AdminUnavailable as exc:
        pytest.skip(f"no {backend} here: {exc}")
    if not isinstance(accounts, kind):
        await accounts.close()
        pytest.skip(f"no {backend} here (the broker is administered through {accounts.where})")
    return accounts


async def open_fabric(broker_url: str, tmp_path: Path, backend: str) -> AsyncIterator[Fabric]:
    try:
        accounts = await accounts_for(broker_url, backend)
    except pytest.skip.Exception:
        if backend != "any":
            raise
        accounts = await accounts_for(broker_url, "rabbitmqctl")
    async with scratch_vhost(broker_url, "orbit-lp", accounts) as vhost:
        yield Fabric(
            accounts, Settings(url=vhost.url, home=tmp_path / "admin", timeout=10), vhost.users
        )


@pytest.fixture
async def fabric(broker_url: str, tmp_path: Path) -> AsyncIterator[Fabric]:
    async for made in open_fabric(broker_url, tmp_path, "any"):
        yield made


@pytest.fixture(params=["management", "rabbitmqctl"])
async def any_fabric(
    request: pytest.FixtureRequest, broker_url: str, tmp_path: Path
) -> AsyncIterator[Fabric]:
    async for made in open_fabric(broker_url, tmp_path, request.param):
        yield made


def endpoint_settings(made: admin.NewUser, tmp_path: Path, *allowed: str) -> Settings:
    return Settings(
        url=made.url,
        home=tmp_path / made.name,
        heartbeat_interval=0.5,
        timeout=10,
        discovery_window=0.3,
        allowed_users=list(allowed),
    )


@pytest.fixture
async def served(fabric: Fabric, tmp_path: Path) -> AsyncIterator[tuple[admin.NewUser, Endpoint]]:
    """Endpoint A, running (sysinfo) with its own least-privilege credentials."""
    made = await fabric.make(Role.ENDPOINT)
    endpoint = Endpoint(made.name, [SysInfo], endpoint_settings(made, tmp_path))
    await endpoint.start()
    try:
        yield made, endpoint
    finally:
        await endpoint.stop(grace=5)


@asynccontextmanager
async def connected(made: admin.NewUser) -> AsyncIterator[aiormq.abc.AbstractConnection]:
    """A plain AMQP connection as the user `made`, closed after the block."""
    connection = await aiormq.connect(made.url)
    try:
        yield connection
    finally:
        await connection.close()


async def refusal(connection: aiormq.abc.AbstractConnection, action: Action) -> str:
    """The broker's refusal of `action`, on a channel of its own (a refusal closes it)."""
    channel = await connection.channel(publisher_confirms=True)
    with pytest.raises(Refused) as refused:
        await action(channel)
    return str(refused.value)


async def allowed(connection: aiormq.abc.AbstractConnection, action: Action) -> None:
    channel = await connection.channel(publisher_confirms=True)
    await action(channel)
    await channel.close()


def consume(queue: str) -> Action:
    async def action(channel: aiormq.abc.AbstractChannel) -> Any:
        return await channel.basic_consume(queue, lambda _: asyncio.sleep(0))

    return action


def publish(exchange: str, key: str, presence: bool = False) -> Action:
    properties = presence_properties() if presence else event_properties(uuid.uuid4().hex)

    async def action(channel: aiormq.abc.AbstractChannel) -> Any:
        confirm = await channel.basic_publish(
            b"{}", exchange=exchange, routing_key=key, properties=properties
        )
        assert isinstance(confirm, aiormq.spec.Basic.Ack)

    return action


def declare_queue(queue: str) -> Action:
    """Declare `queue` as an endpoint declares its request queues (so that only a permission,
    not a different argument, can refuse it)."""
    arguments = request_queue_arguments(Settings())

    async def action(channel: aiormq.abc.AbstractChannel) -> Any:
        return await channel.queue_declare(queue, durable=True, arguments=arguments)

    return action


async def test_an_endpoint_cannot_consume_another_endpoints_queue(
    fabric: Fabric, served: tuple[admin.NewUser, Endpoint]
) -> None:
    a, _ = served
    b = await fabric.make(Role.ENDPOINT)
    theirs, mine = request_queue(a.name, "sysinfo"), request_queue(b.name, "sysinfo")
    async with connected(b) as connection:
        assert theirs in await refusal(connection, consume(theirs))
        assert theirs in await refusal(connection, lambda ch: ch.basic_get(theirs))
        # nor bind a queue of its own to A's events (it may read no topic exchange)
        await allowed(connection, declare_queue(mine))
        said = await refusal(
            connection,
            lambda ch: ch.queue_bind(mine, EVENTS_EXCHANGE, routing_key=f"{a.name}.#"),
        )
        assert EVENTS_EXCHANGE in said
        await allowed(connection, consume(mine))  # its own: the refusals above are not general


async def test_an_endpoint_publishes_events_and_presence_only_under_its_own_name(
    fabric: Fabric, served: tuple[admin.NewUser, Endpoint]
) -> None:
    a, _ = served
    b = await fabric.make(Role.ENDPOINT)
    async with connected(b) as connection:
        for exchange, key, presence in [
            (EVENTS_EXCHANGE, event_key(a.name, "psij", "job_status", b.name), False),
            (TOPOLOGY_EXCHANGE, presence_key(a.name, PresenceStatus.OFFLINE), True),
        ]:
            said = await refusal(connection, publish(exchange, key, presence))
            assert f"access to topic '{key}'" in said
        own = event_key(b.name, "psij", "job_status", "anyone")
        await allowed(connection, publish(EVENTS_EXCHANGE, own))
        await allowed(
            connection, publish(TOPOLOGY_EXCHANGE, presence_key(b.name, "online"), presence=True)
        )


async def test_an_endpoint_declares_nothing_outside_its_own_names(
    fabric: Fabric, served: tuple[admin.NewUser, Endpoint]
) -> None:
    a, _ = served
    b = await fabric.make(Role.ENDPOINT)
    async with connected(b) as connection:
        for action in [
            declare_queue(request_queue(a.name, "sysinfo")),
            declare_queue(request_queue(a.name, "newplugin")),
            declare_queue("unrelated"),
            lambda ch: ch.exchange_declare(EVENTS_EXCHANGE, exchange_type="topic", durable=True),
            lambda ch: ch.exchange_declare(f"{b.name}.mine", exchange_type="topic"),
            lambda ch: ch.exchange_delete(RPC_EXCHANGE),
            lambda ch: ch.queue_delete(request_queue(a.name, "sysinfo")),
            lambda ch: ch.queue_purge(DEAD_LETTER_QUEUE),
        ]:
            await refusal(connection, action)
        await allowed(connection, declare_queue(request_queue(b.name, "newplugin")))


async def test_a_client_cannot_consume_or_make_a_request_queue(
    fabric: Fabric, served: tuple[admin.NewUser, Endpoint]
) -> None:
    a, _ = served
    client = await fabric.make(Role.CLIENT)
    queue = request_queue(a.name, "sysinfo")
    async with connected(client) as connection:
        assert queue in await refusal(connection, consume(queue))
        await refusal(connection, declare_queue(request_queue(a.name, "other")))
        await refusal(
            connection, lambda ch: ch.queue_bind(queue, RPC_EXCHANGE, routing_key="x.sysinfo")
        )
        await refusal(connection, publish(EVENTS_EXCHANGE, event_key(a.name, "psij", "x", "me")))
        # what a client does do: ask for a request queue's consumers, send a request
        await allowed(connection, lambda ch: ch.queue_declare(queue, passive=True))
        await allowed(
            connection,
            lambda ch: ch.basic_publish(
                b"{}", exchange=RPC_EXCHANGE, routing_key=request_key(a.name, "nothing")
            ),
        )


def run_cli(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    env = {"ORBIT_MQ_URL": settings.url, "ORBIT_MQ_CONFIG": str(settings.home / "none.toml")}
    return subprocess.run(
        orbit_cli(*args), env=_env(env), capture_output=True, text=True, timeout=60
    )


def _env(extra: dict[str, str]) -> dict[str, str]:
    return {**os.environ, **extra}


def start_endpoint(env: dict[str, str], name: str, *args: str) -> subprocess.Popen[str]:
    """`orbit-mq endpoint start --name NAME ARGS` with `env` added to this environment."""
    return subprocess.Popen(
        orbit_cli("endpoint", "start", "--name", name, *args),
        env=_env(env),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


async def test_an_endpoint_made_by_admin_serves_a_client_made_by_admin(
    fabric: Fabric, tmp_path: Path
) -> None:
    endpoint, client = fabric.unique("ep"), fabric.unique("cl")
    made_endpoint = await asyncio.to_thread(
        run_cli, fabric.settings, "admin", "endpoint", "add", endpoint, "--allow", client, "--json"
    )
    assert made_endpoint.returncode == 0, made_endpoint.stderr
    fabric.users.append(endpoint)
    made_client = await asyncio.to_thread(
        run_cli, fabric.settings, "admin", "user", "add", client, "--json"
    )
    assert made_client.returncode == 0, made_client.stderr
    fabric.users.append(client)
    endpoint_url = json.loads(made_endpoint.stdout)["url"]
    client_url = json.loads(made_client.stdout)["url"]
    env = {
        "ORBIT_MQ_URL": endpoint_url,
        "ORBIT_MQ_HOME": str(tmp_path / "endpoint"),
        "ORBIT_MQ_HEARTBEAT_INTERVAL": "0.5",
        "ORBIT_MQ_CONFIG": str(tmp_path / "none.toml"),
    }
    process = start_endpoint(env, endpoint, "--plugins", "sysinfo", "--allow", client)
    try:
        async with (
            orbit_mq.connect(client_url, timeout=10, discovery_window=0.3) as sdk,
            sdk.subscribe(f"{endpoint}.sysinfo.session_status") as events,
        ):
            await wait_online(sdk, endpoint)
            info = await sdk.endpoint(endpoint).info()
            assert info.user == endpoint  # it runs as its own broker user
            sysinfo = await sdk.endpoint(endpoint).plugin(orbit_mq.SysInfo)
            assert (await sysinfo.metrics()).hostname
            queued = await sdk.call(endpoint, "sysinfo", "homedir", wait=True)
            assert isinstance(queued, str)
            event = await asyncio.wait_for(anext(aiter(events)), 10)
            assert (event.endpoint, event.topic) == (endpoint, "session_status")
    finally:
        stop_process(process)
    output = process.stdout.read() if process.stdout else ""
    assert "ACCESS_REFUSED" not in output, output


async def test_pool_members_made_by_admin_serve_their_pool_and_no_other_endpoint_may(
    fabric: Fabric, tmp_path: Path
) -> None:
    pool = fabric.unique("pool")
    client = await fabric.make(Role.CLIENT)
    members = [await fabric.make(Role.ENDPOINT, f"{pool}-{m}", pool=pool) for m in "ab"]
    outsider = await fabric.make(Role.ENDPOINT)
    endpoints = [
        Endpoint(
            made.name,
            [SysInfo],
            endpoint_settings(made, tmp_path, client.name).model_copy(update={"pool": pool}),
        )
        for made in members
    ]
    try:
        for endpoint in endpoints:
            await endpoint.start()
        async with orbit_mq.connect(client.url, timeout=10, discovery_window=0.3) as sdk:
            served = {
                remote(await sdk.endpoint(pool).plugin(orbit_mq.SysInfo)).member for _ in range(8)
            }
            assert served == {made.name for made in members}
            assert sorted(await sdk.pool_members(pool)) == sorted(m.name for m in members)
        theirs = request_queue(pool, "sysinfo")
        async with connected(outsider) as connection:
            assert theirs in await refusal(connection, consume(theirs))
        report = await admin.check(fabric.accounts, vhost_of(fabric.settings.url))
        assert not report.too_broad, report.too_broad
    finally:
        for endpoint in endpoints:
            await endpoint.stop(grace=5)


async def test_check_passes_the_users_admin_made_and_flags_broad_ones(
    any_fabric: Fabric, tmp_path: Path
) -> None:
    fabric = any_fabric
    endpoint = await fabric.make(Role.ENDPOINT)
    client = await fabric.make(Role.CLIENT)
    vhost = vhost_of(fabric.settings.url)
    report = await admin.check(fabric.accounts, vhost)
    assert {endpoint.name, client.name} <= set(report.checked)
    assert report.findings == []
    passed = await asyncio.to_thread(run_cli, fabric.settings, "admin", "check")
    assert passed.returncode == 0, passed.stdout + passed.stderr

    wide = fabric.unique("wide")
    await fabric.make_raw(wide, Rights(".*", ".*", ".*"))
    # an endpoint user whose events are not held to its name (no topic permission)
    loose = fabric.unique("loose")
    narrow = grant_for(Role.ENDPOINT, loose).rights
    await fabric.make_raw(loose, narrow, tags=(Role.ENDPOINT.tag,))
    report = await admin.check(fabric.accounts, vhost)
    flagged = {finding.user for finding in report.too_broad}
    assert flagged == {wide, loose}
    problems = [finding.problem for finding in report.too_broad if finding.user == loose]
    assert any("another endpoint's events" in problem for problem in problems)
    failed = await asyncio.to_thread(run_cli, fabric.settings, "admin", "check")
    assert failed.returncode == 1
    assert f"too broad: {wide}: configure '.*' covers 'orbit.rpc'" in failed.stdout
