"""Task batches' webhooks against the real broker, a real endpoint serving `tasks` and a real
HTTP receiver on 127.0.0.1: signed groups of transitions, in seq order per task, with a final
`done`, though the receiver or the gateway was down mid-batch; the gateway's routes; another
user's uids refused. The store's grouping alone (no broker) too."""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
from collections import defaultdict
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from broker_users import two_users_and_endpoint
from conftest import StartEndpoint
from test_web import serve
from webhook_support import SECRET, WITHIN, Receiver, delete_queue

import orbit_mq
from orbit_mq.config import Settings
from orbit_mq.contracts.tasks import Tasks, TaskSpec, TaskState, TaskStatus
from orbit_mq.permissions import client_grant
from orbit_mq.protocol import owned_pattern
from orbit_mq.subscribe import durable_queue_name
from orbit_mq.waiting import wait_within
from orbit_mq.web import create_app
from orbit_mq.webhooks import (
    DELIVERY_HEADER,
    PATTERNS,
    SIGNATURE_HEADER,
    Webhooks,
    WebhookStore,
    signature,
)
from orbit_mq.webhooks.batches import GROUP_ITEMS
from orbit_mq.webhooks.deliver import POST_TIMEOUT
from orbit_mq.workers.plugins.tasks.plugin import TasksPlugin

pytestmark = pytest.mark.timeout(300)
COUNT = 50  # tasks per batch
API = "/api/v1"


class Noticing(httpx.AsyncHTTPTransport):
    """A transport that notices a POST nobody answered (the receiver being down)."""

    def __init__(self) -> None:
        super().__init__()
        self.refused = asyncio.Event()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        try:
            return await super().handle_async_request(request)
        except httpx.TransportError:
            self.refused.set()
            raise


@pytest.fixture
def transport() -> Noticing:
    return Noticing()


async def _webhooks(
    fabric: orbit_mq.Fabric, tmp_path: Path, name: str, transport: Noticing
) -> Webhooks:
    http = httpx.AsyncClient(timeout=POST_TIMEOUT, transport=transport)
    store = WebhookStore(tmp_path / "webhooks.db")
    made = Webhooks(fabric, store, subscription=name, http=http)
    await made.start()
    return made


@pytest.fixture
async def hooks(
    fabric: orbit_mq.Fabric, tmp_path: Path, settings: Settings, name: str, transport: Noticing
) -> AsyncIterator[Webhooks]:
    made = await _webhooks(fabric, tmp_path, name, transport)
    yield made
    await made.close()
    made.store.close()
    await delete_queue(settings.url, durable_queue_name(fabric.user, name))


def waiting_tasks(flag: Path, uids: list[str]) -> list[TaskSpec]:
    """Tasks that end once `flag` exists (each gives up after 60 s)."""
    script = f"for i in $(seq 600); do [ -e {flag} ] && exit 0; sleep 0.1; done; exit 1"
    return [TaskSpec(uid=uid, executable="/bin/sh", arguments=["-c", script]) for uid in uids]


def batch_posts(receiver: Receiver, batch: str) -> list[dict[str, Any]]:
    """The batch's POSTs, each signed with the secret; a repeat (the same x-orbit-delivery)
    carries the same bytes; in order n = 1, 2, … without a gap."""
    bodies: dict[int, bytes] = {}
    for headers, body in list(receiver.posts):
        assert hmac.compare_digest(headers[SIGNATURE_HEADER], signature(SECRET, body))
        key, n = headers[DELIVERY_HEADER].rsplit(":", 1)
        if key != batch:
            continue
        assert bodies.setdefault(int(n), body) == body, f"delivery {n} changed on a repeat"
        assert list(bodies) == list(range(1, len(bodies) + 1)), list(bodies)  # in order
    groups = [json.loads(bodies[n]) for n in sorted(bodies)]
    assert all(group["batch"] == batch and group["n"] == n for n, group in enumerate(groups, 1))
    return groups


def transitions(receiver: Receiver, batch: str) -> list[dict[str, Any]]:
    return [t for group in batch_posts(receiver, batch) for t in group["transitions"]]


def check_batch(groups: list[dict[str, Any]], uids: list[str], first: int = 1) -> None:
    """Every task's transitions from seq `first` on, in order, ending DONE; only the last
    group says done, with the counts."""
    steps: dict[str, list[tuple[int, str]]] = defaultdict(list)
    for number, group in enumerate(groups, 1):
        assert group["done"] is (number == len(groups)), (number, len(groups))
        assert 0 < len(group["transitions"]) <= GROUP_ITEMS
        for step in group["transitions"]:
            steps[step["uid"]].append((step["seq"], step["state"]))
    assert sorted(steps) == sorted(uids)
    for uid, seen in steps.items():
        assert [seq for seq, _ in seen] == list(range(first, first + len(seen))), (uid, seen)
        assert seen[-1][1] == TaskState.DONE.value, (uid, seen)
        assert first > 1 or seen[0][1] == TaskState.NEW.value, (uid, seen)
    assert groups[-1]["counts"] == {TaskState.DONE.value: len(uids)}
    assert groups[-1]["tasks"] == len(uids)


async def _running_batch(
    start_endpoint: StartEndpoint,
    fabric: orbit_mq.Fabric,
    hooks: Webhooks,
    receiver: Receiver,
    name: str,
    flag: Path,
) -> tuple[str, list[str], Tasks]:
    """A batch of COUNT tasks registered, submitted, and all seen RUNNING by the receiver;
    they end once `flag` exists."""
    await start_endpoint([TasksPlugin])
    uids = [f"{name}-{i}" for i in range(COUNT)]
    batch = hooks.register_batch(name, fabric.user, uids, receiver.url, SECRET)
    tasks = await fabric.endpoint(name).plugin(Tasks, session=False)
    await tasks.submit_tasks(tasks=waiting_tasks(flag, uids))

    def all_running() -> bool:
        running = TaskState.RUNNING.value
        return {t["uid"] for t in transitions(receiver, batch) if t["state"] == running} == set(
            uids
        )

    assert await receiver.wait_for(all_running), "not every task was seen RUNNING"
    return batch, uids, tasks


async def _ended(tasks: Tasks, uids: list[str]) -> None:
    statuses = await tasks.wait_tasks(uids=uids, timeout=WITHIN)
    assert {status.state for status in statuses} == {TaskState.DONE}


async def test_a_batch_arrives_grouped_signed_in_order_though_the_receiver_was_down(
    start_endpoint: StartEndpoint,
    fabric: orbit_mq.Fabric,
    hooks: Webhooks,
    receiver: Receiver,
    name: str,
    tmp_path: Path,
    transport: Noticing,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    flag = tmp_path / "go"
    batch, uids, tasks = await _running_batch(start_endpoint, fabric, hooks, receiver, name, flag)
    receiver.stop()
    flag.touch()  # the tasks end while nobody receives
    await _ended(tasks, uids)

    await wait_within(transport.refused.wait(), WITHIN)  # a POST failed meanwhile
    receiver.start()
    info = await wait_within(hooks.batch_settled(batch), WITHIN)
    groups = batch_posts(receiver, batch)
    check_batch(groups, uids)
    assert len(groups) < 3 * COUNT  # grouped: fewer POSTs than transitions
    assert info is not None and info.status == "done" and info.delivered == len(groups)
    assert info.attempts > len(groups) and info.last_error is None and info.tasks == COUNT
    assert [i.model_dump() for i in hooks.infos(fabric.user)] == [info.model_dump()]
    assert SECRET not in info.model_dump_json() and SECRET not in caplog.text


async def test_what_a_batch_does_while_the_gateway_is_down_is_delivered_when_it_returns(
    start_endpoint: StartEndpoint,
    fabric: orbit_mq.Fabric,
    hooks: Webhooks,
    receiver: Receiver,
    name: str,
    tmp_path: Path,
) -> None:
    flag = tmp_path / "go"
    batch, uids, tasks = await _running_batch(start_endpoint, fabric, hooks, receiver, name, flag)
    await hooks.close()  # the gateway stops; the tasks end meanwhile
    flag.touch()
    await _ended(tasks, uids)
    again = await _webhooks(fabric, tmp_path, name, Noticing())
    try:
        info = await wait_within(again.batch_settled(batch), WITHIN)
    finally:
        await again.close()
        again.store.close()
    assert info is not None and info.status == "done"
    check_batch(batch_posts(receiver, batch), uids)


async def test_the_gateway_submits_with_a_webhook_and_registers_tasks_submitted_before(
    start_endpoint: StartEndpoint,
    fabric: orbit_mq.Fabric,
    receiver: Receiver,
    name: str,
    settings: Settings,
    tmp_path: Path,
) -> None:
    await start_endpoint([TasksPlugin])
    app = create_app(settings, keep_alive=1.0, webhooks=name)
    hook = {"url": receiver.url, "secret": SECRET}
    submit, register = f"{API}/endpoints/{name}/tasks", f"{API}/endpoints/{name}/tasks/webhook"
    try:
        async for url in serve(app):
            async with httpx.AsyncClient(base_url=url, auth=("guest", "guest"), timeout=60) as web:
                # answered once the gateway started, so its subscription is bound
                assert (await web.get(f"{API}/webhooks")).json() == []
                webhooks: Webhooks = app.state.deliveries.running()
                # no uids given: the gateway chooses them, before it submits
                body = {"tasks": [{"executable": "/bin/true"}] * COUNT, "webhook": hook}
                answer = await web.post(submit, json=body)
                assert answer.status_code == 200, answer.text
                sent = answer.json()
                uids, batch = sent["uids"], sent["webhook"]["batch"]
                assert len(set(uids)) == COUNT and sent["webhook"]["tasks"] == COUNT
                info = await wait_within(webhooks.batch_settled(batch), WITHIN)
                assert info is not None and info.status == "done"
                check_batch(batch_posts(receiver, batch), uids)
                listed = (await web.get(f"{API}/webhooks")).json()
                assert [w["batch"] for w in listed if w["kind"] == "tasks"] == [batch]
                assert SECRET not in answer.text + json.dumps(listed)

                # the same tasks, ended, registered afterwards: each from its current state
                again = await web.post(register, json={"uids": uids, **hook})
                assert again.status_code == 200, again.text
                later = again.json()["batch"]
                assert await wait_within(webhooks.batch_settled(later), WITHIN) is not None
                check_batch(batch_posts(receiver, later), uids, first=3)

                # tasks in a pending batch cannot be in a second one
                flag = tmp_path / "go"
                waiting = [waiting_tasks(flag, [f"{name}-wait"])[0].model_dump(mode="json")]
                pending = await web.post(submit, json={"tasks": waiting, "webhook": hook})
                assert pending.status_code == 200, pending.text
                twice = await web.post(register, json={"uids": [f"{name}-wait"], **hook})
                assert twice.status_code == 409, twice.text
                flag.touch()
                assert await wait_within(
                    webhooks.batch_settled(pending.json()["webhook"]["batch"]), WITHIN
                )

                # refused before anything is kept
                unknown = await web.post(register, json={"uids": ["no-such-task"], **hook})
                assert unknown.status_code == 404, unknown.text
                short = await web.post(register, json={"uids": uids, "url": receiver.url})
                assert short.status_code == 422, short.text
                twin = {"tasks": [{"uid": "twin", "executable": "/bin/true"}] * 2, "webhook": hook}
                refused = await web.post(submit, json=twin)
                assert refused.status_code == 422, refused.text
                plain = await web.post(submit, json={"tasks": [{"executable": "/bin/true"}]})
                assert plain.status_code == 200 and plain.json()["webhook"] is None, plain.text
                kinds = [w["kind"] for w in (await web.get(f"{API}/webhooks")).json()]
                assert kinds == ["tasks"] * 3
            await app.state.users.close(retire=True)
    finally:
        await delete_queue(settings.url, durable_queue_name(fabric.user, name))


async def test_another_users_task_uids_are_refused(settings: Settings, tmp_path: Path) -> None:
    async with two_users_and_endpoint(settings, tmp_path, "orbit-th", [TasksPlugin]) as two:
        app = create_app(two.on_vhost, keep_alive=1.0, webhooks=two.vhost.name)
        async for url in serve(app):
            await _apart(url, two.endpoint.name, {"alice": two.alice, "bob": two.bob})
            await app.state.users.close(retire=True)


async def _apart(url: str, endpoint: str, users: dict[str, Any]) -> None:
    tasks = f"{API}/endpoints/{endpoint}/tasks"
    hook = {"url": "http://127.0.0.1:9/hook", "secret": "s" * 16}
    alice, bob = ((users[w].name, users[w].password) for w in ("alice", "bob"))
    async with httpx.AsyncClient(base_url=url, auth=alice, timeout=60) as as_alice:
        sent = await as_alice.post(tasks, json={"tasks": [{"executable": "/bin/true"}]})
        assert sent.status_code == 200, sent.text
        uids = sent.json()["uids"]
    async with httpx.AsyncClient(base_url=url, auth=bob, timeout=60) as as_bob:
        theirs = await as_bob.post(f"{tasks}/webhook", json={"uids": uids, **hook})
        assert theirs.status_code == 404, theirs.text
        assert theirs.json()["error"]["details"]["type"] == "TaskNotFound"
        assert (await as_bob.get(f"{API}/webhooks")).json() == []
    async with httpx.AsyncClient(base_url=url, auth=alice, timeout=60) as as_alice:
        mine = await as_alice.post(f"{tasks}/webhook", json={"uids": uids, **hook})
        assert mine.status_code == 200, mine.text  # hers: bob's attempt left nothing behind


# -- without a broker ---------------------------------------------------------------------------


def _status(uid: str, seq: int, state: TaskState) -> TaskStatus:
    return TaskStatus(uid=uid, seq=seq, state=state, time=datetime.now(UTC))


def test_ten_thousand_tasks_make_few_posts_each_task_in_seq_order(tmp_path: Path) -> None:
    store = WebhookStore(tmp_path / "webhooks.db").batches
    uids = [f"t{i}" for i in range(10_000)]
    store.register("b1", "ep", "alice", uids, "http://127.0.0.1:9/", SECRET, 1e12)
    events = 0
    for seq, state in enumerate((TaskState.NEW, TaskState.RUNNING, TaskState.DONE), 1):
        for start in range(0, len(uids), GROUP_ITEMS):  # as task_status_batch events come
            part = uids[start : start + GROUP_ITEMS]
            assert store.keep("ep", "alice", [_status(uid, seq, state) for uid in part]) == {"b1"}
            events += 1
    assert store.keep("ep", "bob", [_status("t1", 4, TaskState.DONE)]) == set()  # not his
    groups = []
    while (delivery := store.delivery("b1", len(groups) + 1)) is not None:
        groups.append(json.loads(delivery.body))
        store.delivered("b1", delivery)
    assert len(groups) == events  # one POST per event, not one per transition
    check_batch(groups, uids)
    info = store.info("b1")
    assert info is not None and info.status == "done" and info.delivered == events


def test_a_transition_waits_for_the_one_before_and_a_late_batch_starts_where_tasks_are(
    tmp_path: Path,
) -> None:
    store = WebhookStore(tmp_path / "webhooks.db").batches
    store.register("b1", "ep", "alice", ["a", "b"], "http://127.0.0.1:9/", SECRET, 1e12)
    assert store.taken("ep", "alice", ["a", "c"]) == ["a"] and store.taken("ep", "bob", ["a"]) == []
    assert store.keep("ep", "alice", [_status("a", 2, TaskState.RUNNING)]) == set()  # held
    assert store.keep("ep", "alice", [_status("a", 1, TaskState.NEW)]) == {"b1"}
    # b was submitted before: its current state starts it
    assert store.catch_up("b1", [_status("b", 3, TaskState.DONE)])
    store.keep("ep", "alice", [_status("a", 3, TaskState.DONE), _status("b", 3, TaskState.DONE)])
    steps = []
    n = 1
    while (delivery := store.delivery("b1", n)) is not None:
        group = json.loads(delivery.body)
        steps += [(t["uid"], t["seq"]) for t in group["transitions"]]
        n += 1
    assert steps == [("a", 1), ("a", 2), ("b", 3), ("a", 3)] and group["done"]


def test_the_gateways_all_events_user_may_bind_task_batches_too() -> None:
    """`admin user add --all-events`: the webhooks' bindings (every owner) are in its topic
    read rights; a plain client's are not."""
    import re

    for pattern in PATTERNS:
        key = owned_pattern(pattern, None)
        (everyone,) = client_grant("gateway", all_events=True).topics
        (own,) = client_grant("gateway").topics
        assert re.search(everyone.read, key) and not re.search(own.read, key), key
