"""A vhost of a test's own on the real broker, with the broker users made in it; both are
deleted afterwards. Used by the modules that run endpoints and clients as real users."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from urllib.parse import quote

import pytest
from yarl import URL

from orbit_mq.broker_admin import Accounts, open_accounts
from orbit_mq.config import Settings
from orbit_mq.errors import AdminUnavailable
from orbit_mq.permissions import Rights
from orbit_mq.tls import login_user


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
