"""The `tasks` contract (also served as `rhapsody`): many small tasks — executables and Python
functions — with the method names of rhapsody-py's sessions, journaled, thousands per second.

    tasks = await fabric.endpoint("hpc1").plugin(Tasks)
    sent = await tasks.submit_tasks(tasks=[TaskSpec(executable="/bin/true")])
    (status,) = await tasks.wait_tasks(uids=sent.uids)

`orbit_mq.TaskExecutor` and `orbit_mq.tasks.submit` build on these methods (pipelined
submission in batches, waiting on events).

Events: `{endpoint}.tasks.task_status_batch` (`TaskStatusBatch`) carries every transition of
every task, many per message; `{endpoint}.tasks.task_status` (`TaskStatus`) one per transition
of the tasks submitted with `notify="each"`. Per task, seq runs 1, 2, 3 … without gaps in both.
A task's state and its events are journaled in one transaction, in batches, before anything
is published or answered.
"""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal

from pydantic import BaseModel, Field, NonNegativeFloat, NonNegativeInt, PositiveFloat

from orbit_mq.contract import Contract
from orbit_mq.contracts.tasks.errors import (
    BackendUnavailable,
    InvalidTask,
    PickleRefused,
    ResultNotAvailable,
    TaskNotFound,
)
from orbit_mq.contracts.tasks.models import (
    INLINE_RESULT,
    TERMINAL,
    BackendInfo,
    CancelSummary,
    ResultPart,
    Submitted,
    Task,
    TaskList,
    TaskResources,
    TaskSpec,
    TaskState,
    TaskStatus,
    TaskStatusBatch,
)
from orbit_mq.protocol import SessionInfo
from orbit_mq.rpc import rpc

MAX_TASKS = 100_000  # per submit_tasks call (the SDK splits larger submissions)
MAX_WAIT = 1000  # uids per wait_tasks call
MAX_RESULT_PART = 8 * 1024 * 1024
Limit = Annotated[int, Field(ge=0, le=1000)]
Notify = Literal["batch", "each"]


class Tasks(Contract):
    name = "tasks"
    aliases: ClassVar[tuple[str, ...]] = ("rhapsody",)
    version = "1.0.0"
    events: ClassVar[dict[str, type[BaseModel]]] = {
        **Contract.events,
        "task_status": TaskStatus,
        "task_status_batch": TaskStatusBatch,
    }
    errors = (TaskNotFound, InvalidTask, PickleRefused, BackendUnavailable, ResultNotAvailable)

    @rpc
    async def register_session(
        self, ttl: PositiveFloat | None = None, backends: list[str] | None = None
    ) -> SessionInfo:
        """Open a session whose tasks run on `backends` (their first by default; `concurrent`
        when none are named); BackendUnavailable names the ones this endpoint has."""
        raise NotImplementedError

    @rpc
    async def backends(self) -> list[BackendInfo]:
        """The execution backends this endpoint knows, and which of them can run here."""
        raise NotImplementedError

    @rpc(dedupe=True, session="optional")
    async def submit_tasks(
        self,
        tasks: Annotated[list[TaskSpec], Field(max_length=MAX_TASKS)],
        notify: Notify = "batch",
    ) -> Submitted:
        """Accept tasks; they are journaled (all of them or, if any is invalid, none) before
        the reply, and run soon after, in order, as many at once as the backend allows.

        A task whose uid the caller already has on the endpoint is not run again (its uid is
        listed in `duplicates`), nor is a request repeated with the same message_id. With
        `notify="each"` every transition is also a `task_status` event of its own.
        """
        raise NotImplementedError

    @rpc
    async def wait_tasks(
        self,
        uids: Annotated[list[str], Field(max_length=MAX_WAIT)],
        timeout: NonNegativeFloat | None = None,
    ) -> list[TaskStatus]:
        """Wait until all the tasks ended, or `timeout` s passed (at most until shortly before
        the request's deadline); their statuses in the order asked for, ended or not."""
        raise NotImplementedError

    @rpc(session="optional")
    async def list_tasks(
        self,
        state: TaskState | None = None,
        session: str | None = None,
        offset: NonNegativeInt = 0,
        limit: Limit = 100,
    ) -> TaskList:
        """The caller's tasks in the order they were submitted, optionally only those in
        `state` or of `session`; `offset` and `limit` page through them, `counts` counts them
        by state (limit=0 for the counts alone)."""
        raise NotImplementedError

    @rpc
    async def get_task(self, uid: str) -> Task:
        """One of the caller's tasks, in full."""
        raise NotImplementedError

    @rpc
    async def get_result(
        self,
        uid: str,
        offset: NonNegativeInt = 0,
        length: Annotated[int, Field(ge=1, le=MAX_RESULT_PART)] = MAX_RESULT_PART,
    ) -> ResultPart:
        """A piece of an ended function task's result, for results too large to carry in a
        status (`result_kept`); ResultNotAvailable while there is none."""
        raise NotImplementedError

    @rpc
    async def cancel_task(self, uid: str) -> Task:
        """Cancel a task: it ends CANCELED (a running one is stopped); one that already ended
        is returned unchanged."""
        raise NotImplementedError

    @rpc(session="optional")
    async def cancel_all_tasks(self) -> CancelSummary:
        """Cancel every task of the caller's that has not ended (of the session, with one)."""
        raise NotImplementedError


__all__ = [
    "INLINE_RESULT",
    "MAX_TASKS",
    "MAX_WAIT",
    "TERMINAL",
    "BackendInfo",
    "BackendUnavailable",
    "CancelSummary",
    "InvalidTask",
    "PickleRefused",
    "ResultNotAvailable",
    "ResultPart",
    "Submitted",
    "Task",
    "TaskList",
    "TaskNotFound",
    "TaskResources",
    "TaskSpec",
    "TaskState",
    "TaskStatus",
    "TaskStatusBatch",
    "Tasks",
]
