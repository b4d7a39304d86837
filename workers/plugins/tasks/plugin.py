"""The tasks plugin (served as `tasks` and `rhapsody`): the endpoint's side of the contract in
orbit_mq/contracts/tasks. Submissions are journaled with their NEW events in one transaction
before the reply; the runner takes them from the journal; the recorder writes every later
transition in batches, with its events."""

from __future__ import annotations

import base64
import time
from collections import Counter
from pathlib import Path
from typing import Any

from pydantic import NonNegativeFloat, NonNegativeInt, PositiveFloat

import orbit_mq.contracts.tasks as contract
from orbit_mq.contracts.tasks import (
    MAX_RESULT_PART,
    BackendInfo,
    BackendUnavailable,
    CancelSummary,
    InvalidTask,
    Notify,
    PickleRefused,
    ResultNotAvailable,
    ResultPart,
    Submitted,
    Task,
    TaskList,
    TaskNotFound,
    TaskSpec,
    TaskState,
    TaskStatus,
)
from orbit_mq.contracts.tasks.models import new_uid
from orbit_mq.protocol import SessionInfo
from orbit_mq.rpc import INJECTED, CallContext, Session
from orbit_mq.shorten import shorten
from orbit_mq.waiting import wait_within
from orbit_mq.workers.plugin import Plugin, PluginContext, wait_budget
from orbit_mq.workers.plugins.tasks.backends import DEFAULT_BACKEND, backend_infos
from orbit_mq.workers.plugins.tasks.recorder import Recorder
from orbit_mq.workers.plugins.tasks.runner import Runner
from orbit_mq.workers.plugins.tasks.settings import TasksSettings
from orbit_mq.workers.plugins.tasks.store import NewTask, Record, TaskStore, spec_json

CANCEL_CHUNK = 1000  # tasks canceled per journal write by cancel_all_tasks


class TasksPlugin(Plugin, contract.Tasks):
    def __init__(self, context: PluginContext) -> None:
        super().__init__(context)
        self.options = TasksSettings()
        self.store = TaskStore(context.journal.db)
        self.recorder = Recorder(context.journal, self.store, self.emit, self._written)
        home = context.settings.home / "endpoints" / context.endpoint / "tasks"
        self.directory = Path(self.options.directory or home)
        self.runner = Runner(self.store, self.recorder, self.options, self.directory)

    async def start(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        self.recorder.start()
        await self.runner.start()

    async def stop(self) -> None:
        await self.runner.stop()
        await self.recorder.stop()

    async def health_details(self) -> dict[str, Any]:
        return {
            "tasks": self.store.totals(),
            "loaded": len(self.runner.loaded),
            "workers": self.options.workers,
            "worker_restarts": self.runner.pool.restarts,
            "transitions_written": self.recorder.recorded,
        }

    async def running_work(self) -> int:
        totals = self.store.totals()
        return totals["waiting"] + totals["running"]

    def _written(self, records: list[Record]) -> None:
        self.runner.written(records)

    # -- sessions and backends -------------------------------------------------------------

    async def register_session(
        self,
        ttl: PositiveFloat | None = None,
        backends: list[str] | None = None,
        *,
        ctx: CallContext = INJECTED,
    ) -> SessionInfo:
        names = list(dict.fromkeys(backends or [DEFAULT_BACKEND]))
        for name in names:
            _check_backend(name)
        session = await self.sessions.open(ctx.user, ttl, {"backends": names})
        return session.info()

    async def backends(self) -> list[BackendInfo]:
        return backend_infos()

    # -- submission ------------------------------------------------------------------------

    async def submit_tasks(
        self,
        tasks: list[TaskSpec],
        notify: Notify = "batch",
        *,
        ctx: CallContext = INJECTED,
        session: Session | None = INJECTED,
    ) -> Submitted:
        self._check_pickles(tasks, ctx.user)
        default = (session.state.get("backends") if session else None) or [DEFAULT_BACKEND]
        uids = [spec.uid or new_uid() for spec in tasks]
        _check_unique(uids)
        for name in {spec.backend or default[0] for spec in tasks}:
            _check_backend(name)
        now = time.time()
        session_id = session.id if session else None
        with self.context.journal.transaction():
            known = self.store.ids(ctx.user, uids).keys()
            fresh = [(uid, spec) for uid, spec in zip(uids, tasks, strict=True) if uid not in known]
            rows = [
                NewTask(
                    ctx.user,
                    uid,
                    session_id,
                    spec.name,
                    spec.kind,
                    spec.backend or default[0],
                    notify,
                    spec_json(spec),
                    spec.retries,
                )
                for uid, spec in fresh
            ]
            ids = self.store.insert(rows, now)
            each = notify == "each"
            records = [
                (Record(i, row.uid, TaskState.NEW, 1, now, user=row.user), each)
                for i, row in zip(ids, rows, strict=True)
            ]
            await self.recorder.announce(records)
        self.runner.wake()
        return Submitted(uids=uids, duplicates=[uid for uid in uids if uid in known])

    def _check_pickles(self, tasks: list[TaskSpec], user: str) -> None:
        if self.options.pickles_from(user) or not any(spec.pickled for spec in tasks):
            return
        if not self.options.allow_pickle:
            why = "this endpoint accepts no pickles (ORBIT_MQ_TASKS_ALLOW_PICKLE=false)"
        else:
            why = (
                "this endpoint accepts pickled functions and arguments only from its pickle "
                f"users (ORBIT_MQ_TASKS_PICKLE_USERS), not from {user!r}"
            )
        raise PickleRefused(
            f"{why}; send functions as 'module:name' with JSON args and kwargs",
            {"user": user},
        )

    # -- waiting and queries ---------------------------------------------------------------

    def _ids(self, user: str, uids: list[str]) -> dict[str, int]:
        ids = self.store.ids(user, uids)
        missing = [uid for uid in dict.fromkeys(uids) if uid not in ids]
        if missing:
            shown = ", ".join(shorten(uid) for uid in missing[:5])
            more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
            raise TaskNotFound(f"no such task: {shown}{more}", {"uids": missing[:100]})
        return ids

    async def wait_tasks(
        self,
        uids: list[str],
        timeout: NonNegativeFloat | None = None,
        *,
        ctx: CallContext = INJECTED,
    ) -> list[TaskStatus]:
        ids = self._ids(ctx.user, uids)
        records = self.store.statuses(list(ids.values()))
        waiting = {i for i, record in records.items() if not record.state.final}
        budget = wait_budget(timeout, ctx)
        if waiting and (budget is None or budget > 0):
            waiter = self.recorder.waiter(waiting)
            try:
                await wait_within(waiter.done.wait(), budget)
            except TimeoutError:
                pass
            finally:
                self.recorder.forget(waiter)
            records = self.store.statuses(list(ids.values()))
        return [TaskStatus.model_validate(records[ids[uid]].status()) for uid in uids]

    async def list_tasks(
        self,
        state: TaskState | None = None,
        session: str | None = None,
        offset: NonNegativeInt = 0,
        limit: int = 100,
        *,
        ctx: CallContext = INJECTED,
    ) -> TaskList:
        tasks, total = self.store.page(ctx.user, state, session, offset, limit)
        return TaskList(tasks=tasks, total=total, counts=self.store.counts(ctx.user, session))

    async def get_task(self, uid: str, *, ctx: CallContext = INJECTED) -> Task:
        task = self.store.task(ctx.user, uid)
        if task is None:
            raise TaskNotFound(f"no such task: {shorten(uid)}", {"uids": [uid]})
        return task

    async def get_result(
        self,
        uid: str,
        offset: NonNegativeInt = 0,
        length: int = MAX_RESULT_PART,
        *,
        ctx: CallContext = INJECTED,
    ) -> ResultPart:
        try:
            uid, state, encoding, result = self.store.result(ctx.user, uid)
        except KeyError:
            raise TaskNotFound(f"no such task: {shorten(uid)}", {"uids": [uid]}) from None
        if result is None or encoding not in ("json", "pickle"):
            raise ResultNotAvailable(
                f"task {uid} has no result: it is {state}"
                + ("" if state.final else "; wait for it to end"),
                {"uid": uid, "state": state.value},
            )
        piece = base64.b64encode(result[offset : offset + length]).decode()
        return ResultPart(uid=uid, encoding=encoding, total=len(result), offset=offset, data=piece)

    # -- cancellation ----------------------------------------------------------------------

    async def cancel_task(self, uid: str, *, ctx: CallContext = INJECTED) -> Task:
        ids = self._ids(ctx.user, [uid])
        await self.runner.cancel([ids[uid]])
        await self.recorder.flush()
        return await self.get_task(uid, ctx=ctx)

    async def cancel_all_tasks(
        self, *, ctx: CallContext = INJECTED, session: Session | None = INJECTED
    ) -> CancelSummary:
        session_id = session.id if session else None
        canceled, after = 0, 0
        while ids := self.store.open_ids(ctx.user, session_id, after, CANCEL_CHUNK):
            canceled += await self.runner.cancel(ids)
            await self.recorder.flush()
            after = ids[-1]
        return CancelSummary(canceled=canceled)


def _check_unique(uids: list[str]) -> None:
    twice = sorted(uid for uid, count in Counter(uids).items() if count > 1)
    if twice:
        raise InvalidTask(
            f"a submission names a uid more than once: {', '.join(twice[:5])}",
            {"uids": twice[:100]},
        )


def _check_backend(name: str) -> None:
    infos = {info.name: info for info in backend_infos()}
    info = infos.get(name)
    if info is None or not info.available:
        usable = ", ".join(i.name for i in infos.values() if i.available)
        why = "unknown" if info is None else f"not available here ({info.reason})"
        raise BackendUnavailable(
            f"backend {name!r} is {why}; this endpoint runs tasks on: {usable}",
            {"backend": name},
        )
