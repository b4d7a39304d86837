"""Who is asking: HTTP Basic with broker credentials, and one SDK `Fabric` per logged-in user.

Every request is made as the broker user who logged in, over that user's own connection, so
the broker still checks `user_id` and the endpoints' allow-lists apply unchanged. The
connections are kept for `idle` seconds after their last use (an open event stream counts as
use) and closed at shutdown. A password is never kept: only an HMAC of it under a key made for
this process, to tell whether a request's credentials are those the connection was opened with.
The login form's sessions (`sessions`, `login`) reach the same connections through
`Users.login`, with the password their cookie unseals. Each refused password costs the broker
a connection attempt, so a user name refused FAILED_LIMIT times within FAILED_WINDOW seconds
is not tried again until the oldest of those refusals is that old (`LoginThrottled`, a 429).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import collections
import hashlib
import hmac
import logging
import math
import secrets
import time
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass, field
from typing import TYPE_CHECKING
from urllib.parse import quote, urlsplit, urlunsplit

from orbit_mq.client import Fabric
from orbit_mq.config import Settings
from orbit_mq.errors import AccessRefused, OrbitError

if TYPE_CHECKING:
    from orbit_mq.web.events import Stream

log = logging.getLogger("orbit_mq.web")

DEFAULT_IDLE = 300.0  # s a user's connection stays open after its last request
FAILED_LIMIT = 10  # refused logins of one user name within FAILED_WINDOW s, then a pause
FAILED_WINDOW = 60.0
FAILED_NAMES = 10_000  # user names whose refusals are remembered at most (the oldest go)


class LoginFailed(Exception):
    """The request carries no usable credentials, or the broker refused them."""


class LoginThrottled(LoginFailed):
    """Too many refused logins of this user name lately: not tried now."""

    def __init__(self, user: str, retry_after: float) -> None:
        self.retry_after = max(1, math.ceil(retry_after))
        super().__init__(
            f"too many refused logins for broker user {user!r}: try again in {self.retry_after} s"
        )


class FailedLogins:
    """The recent refusals of each user name (a sliding window per name)."""

    def __init__(
        self,
        limit: int = FAILED_LIMIT,
        window: float = FAILED_WINDOW,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.limit, self.window, self.clock = limit, window, clock
        self._refused: dict[str, collections.deque[float]] = {}

    def check(self, user: str) -> None:
        """LoginThrottled if `user` was refused `limit` times within the last `window` s."""
        refused = self._refused.get(user)
        if refused is None:
            return
        now = self.clock()
        while refused and now - refused[0] >= self.window:
            refused.popleft()
        if len(refused) >= self.limit:
            raise LoginThrottled(user, refused[0] + self.window - now)

    def refused(self, user: str) -> None:
        times = self._refused.pop(user, None) or collections.deque(maxlen=self.limit)
        times.append(self.clock())
        self._refused[user] = times  # the most recently refused name goes last
        if len(self._refused) > FAILED_NAMES:
            del self._refused[next(iter(self._refused))]

    def accepted(self, user: str) -> None:
        self._refused.pop(user, None)


@dataclass(frozen=True)
class Credentials:
    user: str
    password: str = field(repr=False)


def basic_credentials(header: str | None) -> Credentials:
    """The user and password of an `Authorization: Basic …` header."""
    scheme, _, value = (header or "").partition(" ")
    if scheme.lower() != "basic" or not value:
        raise LoginFailed(
            "log in with your broker user and password: HTTP Basic, or POST /api/v1/login"
        )
    try:
        decoded = base64.b64decode(value.strip(), validate=True).decode()
        user, colon, password = decoded.partition(":")
    except (binascii.Error, UnicodeDecodeError):
        raise LoginFailed("malformed Basic credentials") from None
    if not colon or not user:
        raise LoginFailed("malformed Basic credentials: expected user:password")
    return Credentials(user, password)


def user_settings(settings: Settings, credentials: Credentials) -> Settings:
    """The gateway's settings with the broker URL's login replaced by the user's."""
    parts = urlsplit(settings.url)
    hosts = parts.netloc.rpartition("@")[2]
    login = f"{quote(credentials.user, safe='')}:{quote(credentials.password, safe='')}"
    url = urlunsplit(parts._replace(netloc=f"{login}@{hosts}"))
    return settings.model_copy(update={"url": url, "auth": "plain"})


@dataclass
class Connection:
    """One user's Fabric, the digest of the password it was opened with, and its use."""

    fabric: Fabric
    digest: bytes
    last_used: float = field(default_factory=time.monotonic)
    # The user's event streams by pattern set; the connection is in use while one has a
    # listener.
    streams: dict[tuple[str, ...], Stream] = field(default_factory=dict)
    # HTTP Basic's use of it (sessions count their own, `sessions.Session`): a logout closes
    # the connection only when no Basic client has used it within the idle time or streams
    basic_used: float | None = None
    basic_streams: int = 0

    def touch(self) -> None:
        self.last_used = time.monotonic()

    def held_by_basic(self, idle: float) -> bool:
        recent = self.basic_used is not None and time.monotonic() - self.basic_used < idle
        return recent or self.basic_streams > 0

    @property
    def listened(self) -> bool:
        return any(stream.listeners > 0 for stream in self.streams.values())

    async def close(self, retire: bool) -> None:
        """Close the streams (`retire`: and delete their durable queues), then the fabric."""
        for stream in self.streams.values():
            with suppress(OrbitError, OSError, RuntimeError):
                await (stream.retire() if retire else stream.end())
        await _close(self.fabric)


class Users:
    """The open connections, by broker user."""

    def __init__(self, settings: Settings, idle: float = DEFAULT_IDLE) -> None:
        self.settings = settings
        self.idle = idle
        self._key = secrets.token_bytes(32)  # for this process only: digests mean nothing elsewhere
        self._open: dict[str, Connection] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self.failed = FailedLogins()

    def _digest(self, credentials: Credentials) -> bytes:
        message = credentials.user.encode() + b"\0" + credentials.password.encode()
        return hmac.new(self._key, message, hashlib.sha256).digest()

    async def login(self, credentials: Credentials) -> Connection:
        """The user's connection, opened now if it is not yet; LoginFailed if refused,
        LoginThrottled if this user name was refused too often lately."""
        digest = self._digest(credentials)
        lock = self._locks.setdefault(credentials.user, asyncio.Lock())
        async with lock:
            known = self._open.get(credentials.user)
            if known is not None and hmac.compare_digest(known.digest, digest):
                known.touch()
                return known
            self.failed.check(credentials.user)
            try:
                fabric = await self._connect(credentials)
            except LoginFailed:
                self.failed.refused(credentials.user)
                raise
            self.failed.accepted(credentials.user)
            connection = Connection(fabric, digest)
            if known is not None:  # a new password that works: the old connection goes
                self._open.pop(credentials.user, None)
                await known.close(retire=False)
            self._open[credentials.user] = connection
            return connection

    async def _connect(self, credentials: Credentials) -> Fabric:
        fabric = Fabric(user_settings(self.settings, credentials))
        try:
            await fabric.open()
        except AccessRefused:
            await _close(fabric)
            log.info("login refused for broker user %r", credentials.user)
            raise LoginFailed("the broker refused this user and password") from None
        except BaseException:
            await _close(fabric)
            raise
        log.info("broker user %r logged in", credentials.user)
        return fabric

    async def drop(self, user: str) -> None:
        """Close `user`'s connection now (its last session logged out), durable queues too."""
        async with self._locks.setdefault(user, asyncio.Lock()):
            connection = self._open.pop(user, None)
            if connection is not None:
                log.info("closing the connection of broker user %r: logged out", user)
                await connection.close(retire=True)

    def get(self, user: str) -> Connection | None:
        return self._open.get(user)

    async def close_idle(self, idle: float | None = None) -> None:
        """Close the connections unused for `idle` seconds (default: the gateway's) and with
        no event stream listened to."""
        now, idle = time.monotonic(), self.idle if idle is None else idle
        for user, connection in list(self._open.items()):
            if not connection.listened and now - connection.last_used >= idle:
                self._open.pop(user, None)
                log.info("closing the idle connection of broker user %r", user)
                await connection.close(retire=True)
        for user, lock in list(self._locks.items()):  # not one kept per name ever tried
            if user not in self._open and not lock.locked():
                del self._locks[user]

    async def reap(self) -> None:
        """Close idle connections every quarter of `idle`, until cancelled (at shutdown)."""
        while True:
            await asyncio.sleep(max(self.idle / 4, 0.05))  # a periodic sweep, not a wait
            await self.close_idle()

    async def close(self, retire: bool = False) -> None:
        """Close every connection; the durable queues of their event streams stay (keeping
        events for the next run) unless `retire`."""
        connections, self._open = list(self._open.values()), {}
        for connection in connections:
            await connection.close(retire)

    def __len__(self) -> int:
        return len(self._open)


async def _close(fabric: Fabric) -> None:
    with suppress(OrbitError, OSError, RuntimeError):
        await fabric.close()
