"""A vhost of a test's own on the real broker, with the broker users made in it; both are
deleted afterwards. Used by the modules that run endpoints and clients as real users."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

import pytest
from yarl import URL

from orbit_mq import admin
from orbit_mq.admin import NewUser
from orbit_mq.broker_admin import Accounts, open_accounts
from orbit_mq.config import Settings
from orbit_mq.errors import AdminUnavailable
from orbit_mq.permissions import Rights, Role
from orbit_mq.tls import login_user
from orbit_mq.workers.endpoint import Endpoint
from orbit_mq.workers.plugin import Plugin


@dataclass
class Vhost:
    accounts: Accounts
    name: str
    url: str  # the administrator's URL on this vhost
    users: list[str] = field(default_factory=list)  # made here: deleted with the vhost


def vhost_url(broker_url: str, vhost: str) -> str:
    return str(URL(broker_url).with_path("/" + quote(vhost, safe=""), encoded=True))


async def administered(broker_url: str) -> Accounts:
    """The broker's user administration, or skip: users cannot be made here."""
    try:
        return await open_accounts(broker_url)
    except AdminUnavailable as exc:
        pytest.skip(f"cannot make broker users here: {exc}")


@asynccontextmanager
async def scratch_vhost(
    broker_url: str, prefix: str, accounts: Accounts | None = None
) -> AsyncIterator[Vhost]:
    """A new vhost `{prefix}-<random>` on which the administrator of `broker_url` may do
    everything; it, and the users listed in `Vhost.users`, go when the block ends."""
    accounts = accounts or await administered(broker_url)
    name = f"{prefix}-{uuid.uuid4().hex[:10]}"
    await accounts.add_vhost(name)
    try:
        administrator = login_user(Settings(url=broker_url))
        await accounts.set_rights(name, administrator, Rights(".*", ".*", ".*"))
        vhost = Vhost(accounts, name, vhost_url(broker_url, name))
        try:
            yield vhost
        finally:
            for user in vhost.users:
                await accounts.delete_user(user)
    finally:
        await accounts.delete_vhost(name)
        await accounts.close()


@dataclass
class TwoUsers:
    """Two client users on a scratch vhost and an endpoint there that trusts both."""

    vhost: Vhost
    alice: NewUser
    bob: NewUser
    endpoint: Endpoint
    on_vhost: Settings  # the test's settings on the vhost (a gateway's, for instance)


@asynccontextmanager
async def two_users_and_endpoint(
    settings: Settings, home: Path, prefix: str, plugins: Sequence[type[Plugin]]
) -> AsyncIterator[TwoUsers]:
    """Users `alice…` and `bob…` (client role) on a new vhost `{prefix}-…`, and an endpoint
    `{prefix}…` with `plugins` serving them; all of it goes when the block ends."""
    async with scratch_vhost(settings.url, prefix) as vhost:
        tag = uuid.uuid4().hex[:8]
        made = Settings(url=vhost.url, home=home / "admin")
        alice = await admin.add_user(vhost.accounts, made, Role.CLIENT, f"alice{tag}")
        vhost.users.append(alice.name)
        bob = await admin.add_user(vhost.accounts, made, Role.CLIENT, f"bob{tag}")
        vhost.users.append(bob.name)
        trusted = [alice.name, bob.name, login_user(settings)]
        served = {"url": vhost.url, "home": home / "ep", "allowed_users": trusted}
        endpoint = Endpoint(f"{prefix}{tag}", plugins, settings.model_copy(update=served))
        await endpoint.start()
        try:
            on_vhost = settings.model_copy(update={"url": vhost.url})
            yield TwoUsers(vhost, alice, bob, endpoint, on_vhost)
        finally:
            await endpoint.stop(grace=5)
