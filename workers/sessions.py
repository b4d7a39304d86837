"""Sessions of one plugin: created by `register_session`, kept alive by use, expired after a
TTL, and kept in the endpoint's journal so they outlive a restart."""

from __future__ import annotations

import dataclasses
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import Any

from orbit_mq.errors import SessionNotFound, Unauthorized
from orbit_mq.protocol import SessionStatus
from orbit_mq.rpc import Session
from orbit_mq.shorten import shorten
from orbit_mq.workers.journal import Journal
from orbit_mq.workers.ownership import Ownership

SessionListener = Callable[[Session, SessionStatus], Awaitable[None]]


class SessionRegistry:
    def __init__(
        self,
        plugin: str,
        default_ttl: float,
        on_change: SessionListener,
        journal: Journal,
        ownership: Ownership | None = None,
    ) -> None:
        self.plugin = plugin
        self._ownership = ownership or Ownership()
        self.default_ttl = default_ttl
        self._on_change = on_change
        self._journal = journal
        self._sessions = {row["id"]: Session(**row) for row in journal.load_sessions(plugin)}
        self._used: set[str] = set()  # used since the journal last saw them

    def __len__(self) -> int:
        return len(self._sessions)

    async def open(
        self, user: str, ttl: float | None = None, state: dict[str, Any] | None = None
    ) -> Session:
        """A new session of `user`; `state` is the plugin's own, journaled with it."""
        now = time.time()
        session = Session(
            id=secrets.token_urlsafe(12),
            plugin=self.plugin,
            user=user,
            ttl=min(ttl, self.default_ttl) if ttl else self.default_ttl,
            created=now,
            last_used=now,
            state=dict(state or {}),
        )
        self._sessions[session.id] = session
        self._journal.save_session(dataclasses.asdict(session))
        await self._on_change(session, "active")
        return session

    def use(self, session_id: str, user: str, method: str) -> Session:
        """The live session `session_id` of `user`, its idle clock reset, for a call of
        `method`. Another user's session is refused to everyone, admins too: a session is one
        client's state, and an admin reaches other users' work by its ids instead."""
        session = self._sessions.get(session_id)
        now = time.time()
        if session is None or session.expires_at <= now:
            raise SessionNotFound(
                f"session {shorten(session_id)!r} of plugin {self.plugin!r} is unknown or "
                "expired; register a new one",
                {"session": shorten(session_id)},
            )
        if session.user != user:
            self._ownership.audit("refused", user, method, "session", [session_id], {session.user})
            raise Unauthorized(
                f"session {shorten(session_id)!r} belongs to another user",
                {"session": shorten(session_id)},
            )
        session.last_used = now
        self._used.add(session_id)
        return session

    async def close(self, session_id: str, user: str, method: str) -> Session:
        session = self.use(session_id, user, method)
        self._forget(session)
        await self._on_change(session, "closed")
        return session

    async def expire(self, now: float | None = None) -> list[Session]:
        """Drop every session idle past its TTL (returned); save the others' use."""
        now = time.time() if now is None else now
        expired = [s for s in self._sessions.values() if s.expires_at <= now]
        for session in expired:
            self._forget(session)
            await self._on_change(session, "expired")
        self.save()
        return expired

    def save(self) -> None:
        """Write the sessions used since the last save (their clocks and state) to the journal."""
        for session_id in self._used & self._sessions.keys():
            self._journal.save_session(dataclasses.asdict(self._sessions[session_id]))
        self._used.clear()

    def _forget(self, session: Session) -> None:
        del self._sessions[session.id]
        self._used.discard(session.id)
        self._journal.delete_session(session.id)
