"""What `orbit-mq admin` does: make endpoint and client users with least-privilege rights,
remove them, and audit a vhost's users against the model (orbit_mq/permissions.py).

The administrator's own settings (`ORBIT_MQ_URL`, an administrator of the broker) are used to
declare the shared exchanges, which the users made here may not declare themselves.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field

from yarl import URL

from orbit_mq import broker
from orbit_mq.broker_admin import Accounts, vhost_of
from orbit_mq.config import Settings
from orbit_mq.errors import ConfigError
from orbit_mq.lanes import quietly
from orbit_mq.permissions import (
    ALL_EVENTS_TAG,
    Audit,
    BrokerUser,
    Role,
    audit,
    grant_for,
    pool_tag,
)
from orbit_mq.protocol import check_name
from orbit_mq.tls import login_user

PASSWORD_BYTES = 24  # secrets.token_urlsafe: 32 URL-safe characters


@dataclass(frozen=True)
class NewUser:
    """A user just made; its password is shown once and is kept out of repr() (and logs)."""

    name: str
    role: Role
    vhost: str
    password: str = field(repr=False)
    url: str = field(repr=False)  # the broker URL to connect as this user


def user_url(admin_url: str, name: str, password: str) -> str:
    """The administrator's broker URL with another user's credentials (same host, vhost and
    query, e.g. a cafile)."""
    return str(URL(admin_url).with_user(name).with_password(password))


async def declare_shared_topology(settings: Settings) -> None:
    """Declare the fixed exchanges and the dead-letter queue as the administrator."""
    connection = await broker.connect(settings, "orbit-mq admin")
    try:
        await broker.ensure_topology(connection, login_user(settings), settings.queue_type)
    finally:
        await quietly(connection.close())


async def add_user(
    accounts: Accounts,
    settings: Settings,
    role: Role,
    name: str,
    all_events: bool = False,
    pool: str | None = None,
) -> NewUser:
    """Make broker user `name` for `role` on the vhost of `settings.url`, with a new password
    (a client with `all_events` may read every user's events and the audit events; an
    endpoint with a `pool` may serve that pool's request queues too)."""
    kind = "endpoint" if role is Role.ENDPOINT else "user"
    check_name(kind, name)
    vhost = vhost_of(settings.url)
    if await _find(accounts, name) is not None:
        raise ConfigError(
            f"broker user {name!r} exists already; pick another name, or remove it first "
            f"with `orbit-mq admin remove {name}`"
        )
    await declare_shared_topology(settings)
    grant = grant_for(role, name, all_events, pool)
    password = secrets.token_urlsafe(PASSWORD_BYTES)
    tags: tuple[str, ...] = (role.tag,)
    tags += (ALL_EVENTS_TAG,) if all_events and role is Role.CLIENT else ()
    if pool is not None and role is Role.ENDPOINT:
        tags += (pool_tag(pool),)
    await accounts.add_user(name, password, tags)
    try:
        await accounts.set_rights(vhost, name, grant.rights)
        for topic in grant.topics:
            await accounts.set_topic_rights(vhost, name, topic)
    except BaseException:
        await accounts.delete_user(name)  # not left half made, with a password nobody saw
        raise
    return NewUser(name, role, vhost, password, user_url(settings.url, name, password))


async def remove_user(accounts: Accounts, name: str) -> Role:
    """Delete a user `orbit-mq admin` made (its rights on every vhost go with it)."""
    found = await _find(accounts, name)
    if found is None:
        raise ConfigError(f"there is no broker user {name!r} ({accounts.where})")
    role = found.role
    if role is None:
        raise ConfigError(
            f"broker user {name!r} was not made by `orbit-mq admin` (it has neither the "
            f"{Role.ENDPOINT.tag} nor the {Role.CLIENT.tag} tag); remove it with the broker's "
            "own tools if you mean to"
        )
    await accounts.delete_user(name)
    return role


async def check(accounts: Accounts, vhost: str) -> Audit:
    """Audit every user with rights on `vhost` against its role's model."""
    users = await accounts.users()
    rights = await accounts.rights(vhost)
    topics = await accounts.topic_rights(vhost)
    return audit(vhost, users, rights, topics)


async def _find(accounts: Accounts, name: str) -> BrokerUser | None:
    return next((user for user in await accounts.users() if user.name == name), None)
