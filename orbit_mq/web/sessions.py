"""Cookie sessions: a login form exchanges broker credentials for a session cookie.

The design, and why:

- **The cookie is the only key.** Its value is a random secret `S`
  (`secrets.token_urlsafe`, 256 bits). The gateway keeps neither `S` nor anything it can be
  recovered from: a session is filed under `HMAC-SHA256(S, "id")` and its broker password is
  kept encrypted with AES-256-GCM under `HMAC-SHA256(S, "key")` (the session's file name and
  user as associated data, so a sealed password cannot be moved to another session). A
  request with the cookie brings `S`, from which the gateway finds the session and opens
  the password for as long as it takes to reach the user's connection (`identity.Users.
  login`, the path HTTP Basic takes). Why not bind the session to the connection instead:
  the connection is closed after `--idle` seconds without use (a broker connection per
  user is worth saving, and a password changed on the broker should take effect), while a
  session should outlive a coffee break; with the password sealed the gateway reopens the
  connection on the next request without asking for the password again, yet the store
  alone (a memory or disk dump of the gateway, which never writes sessions to disk) gives
  away no password and no usable cookie. What it cannot hide is a connection that is open
  at the moment of the dump: the SDK holds its password to reconnect after a broker
  restart, as any SDK client does (docs/explorer.md).
- **Lookups do not leak through timing**: the store is searched by the HMAC of the cookie,
  not by the cookie, and CSRF tokens are compared with `hmac.compare_digest`.
- **Sessions end**: after `idle` seconds without a request (an open event stream counts as
  use), after `lifetime` seconds whatever the use, at logout, when the broker no longer
  takes the password, and when the gateway stops (they live in its memory only: a restart
  logs everyone out). There are at most `limit` sessions, and at most `per_user` of one
  user (their oldest goes first), so nobody can fill the gateway's memory by logging in.
- Nothing here is logged but user names: never the cookie, the CSRF token or the password.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

log = logging.getLogger("orbit_mq.web")

COOKIE = "orbit-session"
SECURE_COOKIE = "__Host-orbit-session"  # over HTTPS: the browser binds it to this origin
CSRF_HEADER = "x-csrf-token"
NONCE = 12  # bytes, AES-GCM's
# What the cookie's secret is turned into: where its session is filed, the key of its password
FILED_UNDER, SEALED_WITH = b"orbit-mq session id", b"orbit-mq session key"


@dataclass(frozen=True)
class SessionTerms:
    """How long sessions last and how many there may be (create_app(sessions=…))."""

    idle: float = 1800.0  # s without a request
    lifetime: float = 12 * 3600.0  # s from the login, whatever the use
    limit: int = 10_000  # sessions in all
    per_user: int = 32  # sessions of one user; a further login ends their oldest


class SessionsFull(Exception):
    """`limit` live sessions already: a new login is refused until some end."""


def _derive(secret: str, purpose: bytes) -> bytes:
    return hmac.new(secret.encode(), purpose, hashlib.sha256).digest()


@dataclass(eq=False)
class Session:
    """One login: the user, the sealed password, the CSRF token and its times."""

    user: str
    key: bytes = field(repr=False)  # HMAC(S, "id"): where it is filed, not the cookie
    sealed: bytes = field(repr=False)  # nonce + AES-GCM(password)
    csrf: str = field(repr=False)
    created: float = field(default_factory=time.monotonic)
    last_used: float = field(default_factory=time.monotonic)
    streams: int = 0  # event streams open under it (in use while > 0)
    # set when it ends, so that its open event streams end too
    ended: asyncio.Event = field(default_factory=asyncio.Event, repr=False)

    def csrf_matches(self, token: str | None) -> bool:
        if not token:
            return False
        return hmac.compare_digest(self.csrf.encode(), token.encode("utf-8", "replace"))

    def password(self, secret: str) -> str:
        """The password, opened with the cookie's secret (ValueError if it does not fit)."""
        box = AESGCM(_derive(secret, SEALED_WITH))
        nonce, sealed = self.sealed[:NONCE], self.sealed[NONCE:]
        try:
            return box.decrypt(nonce, sealed, self.key + self.user.encode()).decode()
        except InvalidTag:
            raise ValueError("the session's password does not open with this cookie") from None

    def deadline(self, terms: SessionTerms) -> float:
        """The monotonic time it ends by (its lifetime)."""
        return self.created + terms.lifetime

    def expired(self, terms: SessionTerms, now: float) -> bool:
        idle = self.streams == 0 and now - self.last_used >= terms.idle
        return idle or now >= self.deadline(terms)


class Sessions:
    """The live sessions, in this process's memory only."""

    def __init__(self, terms: SessionTerms | None = None) -> None:
        self.terms = terms or SessionTerms()
        self._live: dict[bytes, Session] = {}  # by HMAC(S, "id"), oldest first

    def start(self, user: str, password: str) -> tuple[str, Session]:
        """A new session of `user`: the cookie's secret (given out once, never kept) and the
        session. SessionsFull when `limit` sessions live."""
        self.sweep()
        theirs = [s for s in self._live.values() if s.user == user]
        for oldest in theirs[: max(len(theirs) - self.terms.per_user + 1, 0)]:
            self.end(oldest)
        if len(self._live) >= self.terms.limit:
            raise SessionsFull(f"{self.terms.limit} sessions are open; try again later")
        secret = secrets.token_urlsafe(32)
        key = _derive(secret, FILED_UNDER)
        box = AESGCM(_derive(secret, SEALED_WITH))
        nonce = secrets.token_bytes(NONCE)
        sealed = nonce + box.encrypt(nonce, password.encode(), key + user.encode())
        session = Session(user, key, sealed, secrets.token_urlsafe(32))
        self._live[key] = session
        log.info("session started for broker user %r", user)
        return secret, session

    def find(self, secret: str | None) -> Session | None:
        """The live session of a cookie's secret, used once more; None if there is none."""
        if not secret:
            return None
        session = self._live.get(_derive(secret, FILED_UNDER))
        if session is None:
            return None
        now = time.monotonic()
        if session.expired(self.terms, now):
            self.end(session, "expired")
            return None
        session.last_used = now
        return session

    def end(self, session: Session, why: str = "ended") -> None:
        if self._live.pop(session.key, None) is not None:
            log.info("session of broker user %r %s", session.user, why)
        session.ended.set()

    def of_user(self, user: str) -> int:
        """How many live sessions `user` has."""
        return sum(1 for s in self._live.values() if s.user == user)

    def sweep(self) -> None:
        """End the expired sessions."""
        now = time.monotonic()
        for session in [s for s in self._live.values() if s.expired(self.terms, now)]:
            self.end(session, "expired")

    async def reap(self) -> None:
        """Sweep every quarter of the idle time or lifetime (at most a minute), until
        cancelled."""
        every = min(self.terms.idle, self.terms.lifetime) / 4
        while True:
            await asyncio.sleep(min(max(every, 0.05), 60.0))  # a periodic sweep, not a wait
            self.sweep()

    def close(self) -> None:
        """End them all (the gateway stops: everyone is logged out)."""
        for session in list(self._live.values()):
            self.end(session, "ended: the gateway stops")

    def __len__(self) -> int:
        return len(self._live)

    def __iter__(self) -> Iterator[Session]:
        return iter(list(self._live.values()))
