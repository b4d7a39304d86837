"""Signed webhooks: every state change of a job POSTed to its `callback` URL, in order.

A job submitted with a `callback` and a `callback_secret` is registered here; its `job_status`
events are then delivered one by one, signed as GitHub and psik sign them:

    POST {callback}
    content-type: application/json
    x-hub-signature-256: sha256=HMAC-SHA256(callback_secret, body)
    x-orbit-delivery: {job_id}:{seq}      (the same on a repeat: receivers drop repeats by it)

    {"endpoint": "hpc1", "owner": "alice", "job_id": "…", "seq": 3, "state": …, …}

Nothing is lost while this process or the receiver is down: events wait in a durable
subscription queue; each is written to the store (SQLite) before it is acked, and a job's
transitions are posted strictly by `seq`, each until a 2xx comes back (back-off up to
`MAX_PAUSE`), or until the job's `give_up_after` has passed (then the failure is recorded and
the job's later transitions are not sent). Events that arrive before their job is registered
(a submit's events can come before its answer) are kept a while, so the registration finds
them. The secret is stored (the file is readable by its owner only), never logged or shown.

The subscription reads every user's job events (the process's broker user needs all events:
`orbit-mq admin user add NAME --all-events`); only jobs registered here are delivered.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import os
import sqlite3
import time
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import orjson
from pydantic import BaseModel, Field

from orbit_mq.client import Fabric
from orbit_mq.contracts.psij import JobStatusEvent, PsiJ
from orbit_mq.errors import TransientError
from orbit_mq.retry import retrying
from orbit_mq.subscribe import Subscription
from orbit_mq.waiting import wait_within

log = logging.getLogger("orbit_mq.webhooks")

SIGNATURE_HEADER = "x-hub-signature-256"
DELIVERY_HEADER = "x-orbit-delivery"
SUBSCRIPTION = "webhooks"  # the durable subscription's name
UNCLAIMED_FOR = 3600.0  # s an event of a job nobody registered is kept
CLEANUP_EVERY = 60.0  # s between deletions of the unclaimed ones (not one per event)
POST_TIMEOUT = 10.0  # s for one POST
RECHECK = 30.0  # s a job's sender waits for its next event before looking in the store again

_SCHEMA = """
CREATE TABLE IF NOT EXISTS hooks (
    job_id TEXT PRIMARY KEY, endpoint TEXT NOT NULL, owner TEXT NOT NULL, url TEXT NOT NULL,
    secret TEXT NOT NULL, created REAL NOT NULL, give_up_at REAL NOT NULL,
    delivered INTEGER NOT NULL DEFAULT 0, attempts INTEGER NOT NULL DEFAULT 0,
    status TEXT NOT NULL DEFAULT 'pending', last_error TEXT
);
CREATE TABLE IF NOT EXISTS transitions (
    job_id TEXT NOT NULL, seq INTEGER NOT NULL, final INTEGER NOT NULL, body BLOB NOT NULL,
    received REAL NOT NULL, PRIMARY KEY (job_id, seq)
);
"""


def signature(secret: str, body: bytes) -> str:
    """The `x-hub-signature-256` value of `body`."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


class WebhookInfo(BaseModel):
    """A registered webhook as its owner sees it (never with its secret)."""

    job_id: str
    endpoint: str
    owner: str
    url: str
    status: str = Field(description="pending (transitions to send), done, or failed.")
    delivered: int = Field(description="The last seq delivered (0: none yet).")
    attempts: int = Field(description="POSTs made, repeats after failures included.")
    last_error: str | None = None


class DeliveryFailed(TransientError):
    """A POST that did not get a 2xx answer."""


@dataclass
class Transition:
    seq: int
    final: bool
    body: bytes


class WebhookStore:
    """Registrations and the transitions to send (SQLite, one file, owner-only)."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch(mode=0o600, exist_ok=True)
        os.chmod(path, 0o600)  # it holds the callbacks' secrets
        self._db = sqlite3.connect(path, isolation_level=None)
        self._db.row_factory = sqlite3.Row
        self._db.executescript(_SCHEMA)

    def close(self) -> None:
        self._db.close()

    def register(
        self, job_id: str, endpoint: str, owner: str, url: str, secret: str, give_up_at: float
    ) -> None:
        self._db.execute(
            "INSERT OR IGNORE INTO hooks (job_id, endpoint, owner, url, secret, created,"
            " give_up_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (job_id, endpoint, owner, url, secret, time.time(), give_up_at),
        )

    def keep(self, job_id: str, transition: Transition) -> None:
        self._db.execute(
            "INSERT OR IGNORE INTO transitions VALUES (?, ?, ?, ?, ?)",
            (job_id, transition.seq, transition.final, transition.body, time.time()),
        )

    def hook(self, job_id: str) -> sqlite3.Row | None:
        row: sqlite3.Row | None = self._db.execute(
            "SELECT * FROM hooks WHERE job_id = ?", (job_id,)
        ).fetchone()
        return row

    def pending_hook(self, job_id: str) -> sqlite3.Row | None:
        """The registration of job `job_id` while it has transitions to send."""
        row: sqlite3.Row | None = self._db.execute(
            "SELECT * FROM hooks WHERE job_id = ? AND status = 'pending'", (job_id,)
        ).fetchone()
        return row

    def pending(self) -> list[str]:
        return [r[0] for r in self._db.execute("SELECT job_id FROM hooks WHERE status='pending'")]

    def transition(self, job_id: str, seq: int) -> Transition | None:
        row = self._db.execute(
            "SELECT seq, final, body FROM transitions WHERE job_id = ? AND seq = ?", (job_id, seq)
        ).fetchone()
        return None if row is None else Transition(row[0], bool(row[1]), row[2])

    def attempted(self, job_id: str, error: str | None) -> None:
        self._db.execute(
            "UPDATE hooks SET attempts = attempts + 1, last_error = ? WHERE job_id = ?",
            (error, job_id),
        )

    def delivered(self, job_id: str, transition: Transition) -> None:
        status = "done" if transition.final else "pending"
        with self._db:  # one transaction: the hook moves on, its sent transition goes
            self._db.execute("BEGIN")
            self._db.execute(
                "UPDATE hooks SET delivered = ?, status = ? WHERE job_id = ?",
                (transition.seq, status, job_id),
            )
            self._db.execute(
                "DELETE FROM transitions WHERE job_id = ? AND seq <= ?", (job_id, transition.seq)
            )

    def failed(self, job_id: str, error: str) -> None:
        with self._db:
            self._db.execute("BEGIN")
            self._db.execute(
                "UPDATE hooks SET status = 'failed', last_error = ? WHERE job_id = ?",
                (error, job_id),
            )
            self._db.execute("DELETE FROM transitions WHERE job_id = ?", (job_id,))

    def forget_unclaimed(self, older_than: float) -> None:
        self._db.execute(
            "DELETE FROM transitions WHERE received < ? AND job_id NOT IN "
            "(SELECT job_id FROM hooks)",
            (older_than,),
        )

    def infos(self, owner: str | None = None) -> list[WebhookInfo]:
        where, args = ("WHERE owner = ?", (owner,)) if owner is not None else ("", ())
        rows = self._db.execute(f"SELECT * FROM hooks {where} ORDER BY created", args)
        return [_info(row) for row in rows]

    def info(self, job_id: str) -> WebhookInfo | None:
        row = self.hook(job_id)
        return None if row is None else _info(row)


def _info(row: sqlite3.Row) -> WebhookInfo:
    return WebhookInfo(**{key: row[key] for key in WebhookInfo.model_fields})


class Webhooks:
    """Delivers the job_status events of registered jobs (start, register, close)."""

    def __init__(
        self,
        fabric: Fabric,
        store: WebhookStore,
        *,
        give_up_after: float = 24 * 3600.0,
        subscription: str = SUBSCRIPTION,
        http: httpx.AsyncClient | None = None,
    ) -> None:
        self.fabric = fabric
        self.subscription = subscription
        self.store = store
        self.give_up_after = give_up_after
        self._http = http or httpx.AsyncClient(timeout=POST_TIMEOUT)
        self._events: Subscription[Any] | None = None
        self._senders: dict[str, asyncio.Task[None]] = {}
        self._wake: dict[str, asyncio.Event] = {}
        self._reader: asyncio.Task[None] | None = None
        self._posting: set[str] = set()  # jobs whose POST is on its way
        self._closing = False
        self._next_cleanup = 0.0  # time.monotonic() of the next look for unclaimed events

    async def start(self) -> None:
        """Subscribe (events that wait in the durable queue come first), then resume the
        jobs that still have transitions to send."""
        pattern = f"*.{PsiJ.name}.job_status"
        events = self.fabric.subscribe(pattern, durable=self.subscription, owner=None)
        self._events = await events.start()
        self._reader = asyncio.create_task(self._read(self._events), name="webhook-events")
        for job_id in self.store.pending():
            self._wake_sender(job_id)

    async def close(self) -> None:
        """Stop: a POST on its way is finished and recorded first (so a receiver does not get
        it again from the next start), waiting and back-off are cut short."""
        self._closing = True
        posting = [task for job_id, task in self._senders.items() if job_id in self._posting]
        if posting:
            await asyncio.wait(posting, timeout=POST_TIMEOUT + 1)
        tasks = [t for t in (self._reader, *self._senders.values()) if t is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with suppress(asyncio.CancelledError):
                await task
        if self._events is not None:
            await self._events.close()
        await self._http.aclose()

    def register(self, job_id: str, endpoint: str, owner: str, url: str, secret: str) -> None:
        """Deliver job `job_id`'s transitions (those already received included) to `url`."""
        give_up_at = time.time() + self.give_up_after
        self.store.register(job_id, endpoint, owner, url, secret, give_up_at)
        log.info("webhook for job %s of %s on %s registered", job_id, owner, endpoint)
        self._wake_sender(job_id)

    def infos(self, owner: str | None = None) -> list[WebhookInfo]:
        return self.store.infos(owner)

    def info(self, job_id: str) -> WebhookInfo | None:
        return self.store.info(job_id)

    async def settled(self, job_id: str) -> WebhookInfo | None:
        """Once job `job_id`'s webhook is done or failed (now, if it is), its state."""
        sender = self._senders.get(job_id)
        if sender is not None:
            await asyncio.wait({sender})
        return self.store.info(job_id)

    async def _read(self, events: Subscription[Any]) -> None:
        """Keep every job transition (before its event is acked), and wake its sender."""
        async for event in events:
            data = JobStatusEvent.model_validate(event.data)
            body = orjson.dumps({"endpoint": event.endpoint, "owner": event.owner, **event.data})
            self.store.keep(data.job_id, Transition(data.seq, data.state.final, body))
            if data.job_id in self._wake or self.store.hook(data.job_id) is not None:
                self._wake_sender(data.job_id)
            if time.monotonic() >= self._next_cleanup:
                self._next_cleanup = time.monotonic() + CLEANUP_EVERY
                self.store.forget_unclaimed(time.time() - UNCLAIMED_FOR)

    def _wake_sender(self, job_id: str) -> None:
        wake = self._wake.setdefault(job_id, asyncio.Event())
        wake.set()
        if job_id not in self._senders:
            task = asyncio.create_task(self._send_all(job_id), name=f"webhook-{job_id}")
            self._senders[job_id] = task
            task.add_done_callback(lambda _: self._forget(job_id))

    def _forget(self, job_id: str) -> None:
        self._senders.pop(job_id, None)
        self._wake.pop(job_id, None)

    async def _send_all(self, job_id: str) -> None:
        """Post the job's transitions in seq order until its terminal one, or until it fails."""
        wake = self._wake[job_id]
        while not self._closing and (hook := self.store.pending_hook(job_id)) is not None:
            wake.clear()
            transition = self.store.transition(job_id, hook["delivered"] + 1)
            if transition is None:  # not received yet
                with suppress(TimeoutError):
                    await wait_within(wake.wait(), RECHECK)
                continue
            try:
                await self._post(hook, transition)
            except DeliveryFailed as error:
                log.warning("webhook for job %s gave up: %s", job_id, error)
                self.store.failed(job_id, str(error))
                return
            self.store.delivered(job_id, transition)

    async def _post(self, hook: sqlite3.Row, transition: Transition) -> None:
        headers = {
            "content-type": "application/json",
            SIGNATURE_HEADER: signature(hook["secret"], transition.body),
            DELIVERY_HEADER: f"{hook['job_id']}:{transition.seq}",
        }
        what = f"webhook {hook['job_id']}:{transition.seq} to {hook['url']}"
        async for attempt in retrying(deadline=hook["give_up_at"], what=what):
            with attempt:
                if self._closing:
                    raise asyncio.CancelledError  # stopping, not giving up
                self._posting.add(hook["job_id"])
                try:
                    await self._post_once(hook, transition.body, headers)
                finally:
                    self._posting.discard(hook["job_id"])

    async def _post_once(self, hook: sqlite3.Row, body: bytes, headers: dict[str, str]) -> None:
        try:
            answer = await self._http.post(hook["url"], content=body, headers=headers)
        except httpx.HTTPError as exc:
            error = f"{type(exc).__name__}: {exc}"
        else:
            if answer.is_success:
                self.store.attempted(hook["job_id"], None)
                return
            error = f"HTTP {answer.status_code}"
        self.store.attempted(hook["job_id"], error)
        raise DeliveryFailed(error)
