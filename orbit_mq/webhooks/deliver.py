"""`Webhooks`: reads the events of registered jobs and task batches from one durable
subscription into the store, and POSTs each webhook's deliveries in order, one sender per
webhook, with one retry policy (`orbit_mq.retry.retrying`) until its give-up time."""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Iterable
from contextlib import suppress
from typing import Any, Literal

import httpx
import orjson
from pydantic import ValidationError

from orbit_mq.client import Fabric
from orbit_mq.contracts.psij import JobStatusEvent, PsiJ
from orbit_mq.contracts.tasks import Tasks, TaskStatus, TaskStatusBatch
from orbit_mq.errors import Conflict
from orbit_mq.protocol import Event
from orbit_mq.retry import retrying
from orbit_mq.shorten import shorten
from orbit_mq.subscribe import Subscription
from orbit_mq.waiting import wait_within
from orbit_mq.webhooks.batches import BatchWebhookInfo
from orbit_mq.webhooks.delivery import (
    DELIVERY_HEADER,
    SIGNATURE_HEADER,
    Delivery,
    DeliveryFailed,
    Outbox,
    Target,
    signature,
)
from orbit_mq.webhooks.store import WebhookInfo, WebhookStore

log = logging.getLogger("orbit_mq.webhooks")

SUBSCRIPTION = "webhooks"  # the durable subscription's name
UNCLAIMED_FOR = 3600.0  # s a transition of a job nobody registered is kept
CLEANUP_EVERY = 60.0  # s between deletions of the unclaimed ones (not one per event)
POST_TIMEOUT = 10.0  # s for one POST
RECHECK = 30.0  # s a sender waits for its next delivery before looking in the store again
BATCH_TOPIC = next(topic for topic, model in Tasks.events.items() if model is TaskStatusBatch)
PATTERNS = (f"*.{PsiJ.name}.job_status", f"*.{Tasks.name}.{BATCH_TOPIC}")
Kind = Literal["job", "batch"]
Key = tuple[Kind, str]  # a sender's: which kind of webhook, and its job's or batch's id


class Webhooks:
    """Delivers the events of registered jobs and task batches (start, register, close)."""

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
        self._outboxes: dict[Kind, Outbox] = {"job": store.jobs, "batch": store.batches}
        self._http = http or httpx.AsyncClient(timeout=POST_TIMEOUT)
        self._events: Subscription[Any] | None = None
        self._senders: dict[Key, asyncio.Task[None]] = {}
        self._wake: dict[Key, asyncio.Event] = {}
        self._reader: asyncio.Task[None] | None = None
        self._posting: set[Key] = set()  # webhooks whose POST is on its way
        self._closing = False
        self._next_cleanup = 0.0  # time.monotonic() of the next look for unclaimed events

    async def start(self) -> None:
        """Subscribe (one queue for both kinds: events that wait in it come first), then
        resume the webhooks that still have deliveries to make."""
        events = self.fabric.subscribe(*PATTERNS, durable=self.subscription, owner=None)
        self._events = await events.start()
        self._reader = asyncio.create_task(self._read(self._events), name="webhook-events")
        for kind, outbox in self._outboxes.items():
            for key in outbox.pending():
                self._wake_sender((kind, key))

    async def close(self) -> None:
        """Stop: a POST on its way is finished and recorded first (so a receiver does not get
        it again from the next start), waiting and back-off are cut short."""
        self._closing = True
        posting = [task for key, task in self._senders.items() if key in self._posting]
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

    # -- registering -----------------------------------------------------------------------

    def register(self, job_id: str, endpoint: str, owner: str, url: str, secret: str) -> None:
        """Deliver job `job_id`'s transitions (those already received included) to `url`."""
        give_up_at = time.time() + self.give_up_after
        self.store.jobs.register(job_id, endpoint, owner, url, secret, give_up_at)
        log.info("webhook for job %s of %s on %s registered", job_id, owner, endpoint)
        self._wake_sender(("job", job_id))

    def register_batch(
        self, endpoint: str, owner: str, uids: list[str], url: str, secret: str
    ) -> str:
        """Deliver the transitions of `owner`'s tasks `uids` on `endpoint` from now on, as one
        batch (Conflict when some are in a pending batch already); its id."""
        uids = list(dict.fromkeys(uids))
        taken = self.store.batches.taken(endpoint, owner, uids)
        if taken:
            shown = ", ".join(shorten(uid) for uid in taken[:5])
            raise Conflict(
                f"tasks already in a batch with a webhook: {shown}", {"uids": taken[:100]}
            )
        batch = secrets.token_hex(8)
        give_up_at = time.time() + self.give_up_after
        self.store.batches.register(batch, endpoint, owner, uids, url, secret, give_up_at)
        log.info("webhook for %d tasks of %s on %s registered: batch %s", len(uids), owner,
                 endpoint, batch)  # fmt: skip
        self._wake_sender(("batch", batch))
        return batch

    def catch_up(self, batch: str, statuses: Iterable[TaskStatus]) -> None:
        """Start the batch's tasks whose first transitions were not received here (submitted
        before the registration) from these statuses, the endpoint's word on them."""
        if self.store.batches.catch_up(batch, statuses):
            self._wake_sender(("batch", batch))

    def unregister_batch(self, batch: str) -> None:
        """Forget a batch whose submission or ownership check failed."""
        self.store.batches.unregister(batch)
        sender = self._senders.get(("batch", batch))
        if sender is not None:
            sender.cancel()

    # -- what they became ------------------------------------------------------------------

    def infos(self, owner: str | None = None) -> list[WebhookInfo | BatchWebhookInfo]:
        """Jobs' webhooks, then task batches' (`owner`'s, or everyone's)."""
        return [*self.store.jobs.infos(owner), *self.store.batches.infos(owner)]

    def info(self, job_id: str) -> WebhookInfo | None:
        return self.store.jobs.info(job_id)

    def batch_info(self, batch: str) -> BatchWebhookInfo | None:
        return self.store.batches.info(batch)

    async def settled(self, job_id: str) -> WebhookInfo | None:
        """Once job `job_id`'s webhook is done or failed (now, if it is), its state."""
        await self._settled(("job", job_id))
        return self.store.jobs.info(job_id)

    async def batch_settled(self, batch: str) -> BatchWebhookInfo | None:
        """Once task batch `batch`'s webhook is done or failed, its state."""
        await self._settled(("batch", batch))
        return self.store.batches.info(batch)

    async def _settled(self, key: Key) -> None:
        sender = self._senders.get(key)
        if sender is not None:
            await asyncio.wait({sender})

    # -- receiving -------------------------------------------------------------------------

    async def _read(self, events: Subscription[Event]) -> None:
        """Keep each transition of a registered webhook (before its event is acked) and
        wake its sender; a malformed event is logged and skipped."""
        async for event in events:
            try:
                if event.plugin == Tasks.name:
                    self._keep_tasks(event)
                else:
                    self._keep_job(event)
            except ValidationError as exc:
                log.warning("webhooks skip a malformed %s event of %s: %s", event.topic,
                            event.endpoint, shorten(str(exc)))  # fmt: skip
            if time.monotonic() >= self._next_cleanup:
                self._next_cleanup = time.monotonic() + CLEANUP_EVERY
                self.store.jobs.forget_unclaimed(time.time() - UNCLAIMED_FOR)

    def _keep_job(self, event: Event) -> None:
        """Every job transition is kept a while, registered or not: a job's submitter
        registers after the submit's answer, and short jobs end before that."""
        data = JobStatusEvent.model_validate(event.data)
        body = orjson.dumps({"endpoint": event.endpoint, "owner": event.owner, **event.data})
        self.store.jobs.keep(data.job_id, Delivery(data.seq, body, data.state.final))
        key: Key = ("job", data.job_id)
        if key in self._wake or self.store.jobs.registered(data.job_id):
            self._wake_sender(key)

    def _keep_tasks(self, event: Event) -> None:
        statuses = TaskStatusBatch.model_validate(event.data).tasks
        for batch in self.store.batches.keep(event.endpoint, event.owner or "", statuses):
            self._wake_sender(("batch", batch))

    # -- sending ---------------------------------------------------------------------------

    def _wake_sender(self, key: Key) -> None:
        wake = self._wake.setdefault(key, asyncio.Event())
        wake.set()
        if key not in self._senders:
            task = asyncio.create_task(self._send_all(key), name=f"webhook-{key[0]}-{key[1]}")
            self._senders[key] = task
            task.add_done_callback(lambda _: self._forget(key))

    def _forget(self, key: Key) -> None:
        self._senders.pop(key, None)
        self._wake.pop(key, None)

    async def _send_all(self, key: Key) -> None:
        """Post the webhook's deliveries in order until its final one, or until it fails."""
        kind, name = key
        outbox, wake = self._outboxes[kind], self._wake[key]
        while not self._closing and (target := outbox.target(name)) is not None:
            wake.clear()
            delivery = outbox.delivery(name, target.delivered + 1)
            if delivery is None:  # not received yet
                with suppress(TimeoutError):
                    await wait_within(wake.wait(), RECHECK)
                continue
            try:
                await self._post(key, outbox, target, delivery)
            except DeliveryFailed as error:
                log.warning("webhook for %s %s gave up: %s", kind, name, error)
                outbox.failed(name, str(error))
                return
            outbox.delivered(name, delivery)

    async def _post(self, key: Key, outbox: Outbox, target: Target, delivery: Delivery) -> None:
        headers = {
            "content-type": "application/json",
            SIGNATURE_HEADER: signature(target.secret, delivery.body),
            DELIVERY_HEADER: f"{target.key}:{delivery.n}",
        }
        what = f"webhook {target.key}:{delivery.n} to {target.url}"
        async for attempt in retrying(deadline=target.give_up_at, what=what):
            with attempt:
                if self._closing:
                    raise asyncio.CancelledError  # stopping, not giving up
                self._posting.add(key)
                try:
                    await self._post_once(outbox, target, delivery.body, headers)
                finally:
                    self._posting.discard(key)

    async def _post_once(
        self, outbox: Outbox, target: Target, body: bytes, headers: dict[str, str]
    ) -> None:
        try:
            answer = await self._http.post(target.url, content=body, headers=headers)
        except httpx.HTTPError as exc:
            error = f"{type(exc).__name__}: {exc}"
        else:
            if answer.is_success:
                outbox.attempted(target.key, None)
                return
            error = f"HTTP {answer.status_code}"
        outbox.attempted(target.key, error)
        raise DeliveryFailed(error)
