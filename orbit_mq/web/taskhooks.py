"""Task batches' webhooks through the gateway (`orbit_mq.webhooks` delivers them):

    POST /api/v1/endpoints/{endpoint}/tasks           submit_tasks's parameters, and optionally
                                                      "webhook": {"url": …, "secret": …}
    POST /api/v1/endpoints/{endpoint}/tasks/webhook   {"uids": […], "url": …, "secret": …}

The first registers the batch (the tasks' uids: those the body leaves out are chosen here)
before it submits the tasks, so that no transition can come before the registration; if the
submission fails, the registration goes. The second is for tasks submitted already: it asks
the endpoint for them as the caller (another user's uids are not found), and each task's
deliveries start from its current state there. The secret is never shown again.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field, ValidationError
from starlette.requests import Request
from starlette.responses import Response

from orbit_mq.contracts.tasks import MAX_TASKS, MAX_WAIT, Submitted, Tasks, TaskStatus
from orbit_mq.contracts.tasks.models import TaskUid, new_uid
from orbit_mq.errors import InvalidRequest, invalid_params
from orbit_mq.web.hooks import WebhookRequest
from orbit_mq.web.identity import Connection
from orbit_mq.web.routes import JSON, json_body, name_of, timeout_of
from orbit_mq.web.shortcuts import spec_of
from orbit_mq.webhooks import Webhooks

SUBMIT = spec_of(Tasks, Tasks.submit_tasks)
assert SUBMIT.dedupe  # run once per message_id: a call re-sent after a lost connection is safe
HOOK = "webhook"  # the body's member that is the gateway's, not submit_tasks's


class TasksWebhookRequest(WebhookRequest):
    uids: list[TaskUid] = Field(
        min_length=1, max_length=MAX_TASKS, description="The caller's tasks on the endpoint."
    )


def _hook(given: Any) -> WebhookRequest:
    try:
        return WebhookRequest.model_validate(given)
    except ValidationError as exc:
        raise invalid_params(HOOK, exc) from None


def _with_uids(body: dict[str, Any]) -> list[str] | None:
    """Every task of a submission body given a uid (chosen here where it has none, as the
    endpoint would), so the batch is known before the submit; None if they are not tasks
    (submit_tasks's own check says why)."""
    tasks = body.get("tasks")
    if not isinstance(tasks, list) or not all(isinstance(task, dict) for task in tasks):
        return None
    for task in tasks:
        if not task.get("uid"):
            task["uid"] = new_uid()
    return [str(task["uid"]) for task in tasks]


async def submit(request: Request, user: Connection) -> Response:
    endpoint = name_of(request, "endpoint")
    body = await json_body(request)
    if not isinstance(body, dict):
        message = f"send a JSON object: the parameters of {Tasks.name}.{SUBMIT.name}"
        raise InvalidRequest(message, {"reason": "not_an_object"})
    given = body.pop(HOOK, None)
    hook = _hook(given) if given is not None else None
    uids = _with_uids(body)
    try:
        params = SUBMIT.params.model_validate(body).model_dump(mode="json", exclude_unset=True)
    except ValidationError as exc:
        raise invalid_params(f"{Tasks.name}.{SUBMIT.name}", exc) from None
    assert uids is not None  # the model took them as tasks

    async def sent() -> Submitted:
        result = await user.fabric.call(
            endpoint, Tasks.name, SUBMIT.name, params, timeout=timeout_of(request), retry=True
        )
        return Submitted.model_validate(result)

    if hook is None:
        return JSON({**(await sent()).model_dump(mode="json"), HOOK: None})
    webhooks: Webhooks = request.app.state.deliveries.running()
    batch = webhooks.register_batch(endpoint, user.fabric.user, uids, hook.url, hook.secret)
    try:
        submitted = await sent()
    except Exception:
        webhooks.unregister_batch(batch)
        raise
    if submitted.duplicates:
        # known before: what they did may be over, so they start from where they are (the
        # batch stays if this fails: its new tasks were accepted)
        webhooks.catch_up(batch, await _statuses(user, endpoint, submitted.duplicates))
    info = webhooks.batch_info(batch)
    assert info is not None  # registered just now
    return JSON({**submitted.model_dump(mode="json"), HOOK: info.model_dump(mode="json")})


async def register(request: Request, user: Connection) -> Response:
    endpoint = name_of(request, "endpoint")
    try:
        hook = TasksWebhookRequest.model_validate(await json_body(request))
    except ValidationError as exc:
        raise invalid_params(HOOK, exc) from None
    webhooks: Webhooks = request.app.state.deliveries.running()
    # registered first: transitions from now on are kept, and the statuses asked for next
    # cover what came before (another user's uids are not found: the batch goes)
    batch = webhooks.register_batch(endpoint, user.fabric.user, hook.uids, hook.url, hook.secret)
    try:
        statuses = await _statuses(user, endpoint, hook.uids)
    except Exception:
        webhooks.unregister_batch(batch)
        raise
    webhooks.catch_up(batch, statuses)
    info = webhooks.batch_info(batch)
    assert info is not None  # registered just now
    return JSON(info.model_dump(mode="json"))


async def _statuses(user: Connection, endpoint: str, uids: list[str]) -> list[TaskStatus]:
    """The caller's tasks `uids` as the endpoint has them now (TaskNotFound for any that is
    not theirs), asked without waiting, MAX_WAIT at a time."""
    tasks = await user.fabric.endpoint(endpoint).plugin(Tasks, session=False)
    found: list[TaskStatus] = []
    for start in range(0, len(uids), MAX_WAIT):
        found += await tasks.wait_tasks(uids=uids[start : start + MAX_WAIT], timeout=0)
    return found
