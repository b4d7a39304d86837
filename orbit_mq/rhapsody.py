"""A rhapsody-py execution backend that runs a Session's tasks on an orbit_mq endpoint.

    from rhapsody.api import ComputeTask, Session
    from orbit_mq.rhapsody import OrbitMQBackend

    backend = await OrbitMQBackend("hpc1")              # the endpoint's tasks plugin
    async with Session(backends=[backend]) as session:
        futures = await session.submit_tasks([ComputeTask(executable="/bin/hostname")])
        await asyncio.gather(*futures)

Needs rhapsody-py (`pip install orbit-mq[rhapsody]`). Function tasks travel cloudpickled
(or as "module:name" when the task's function is a string). rhapsody's uids restart with every
process, so each backend gives its tasks an orbit_mq uid of its own (`{prefix}.{uid}`): a
second run of the same script runs its tasks again.
"""

from __future__ import annotations

import secrets
from typing import Any

from rhapsody.backends.base import BaseBackend
from rhapsody.backends.constants import StateMapper

from orbit_mq.client import Fabric
from orbit_mq.config import Settings, load_settings
from orbit_mq.contracts.tasks import Tasks, TaskSpec, TaskState, TaskStatus
from orbit_mq.contracts.tasks.errors import TaskFailed
from orbit_mq.contracts.tasks.values import is_json, pickled
from orbit_mq.tasks import TaskWatcher, result, submit

_SPEC_FIELDS = ("working_directory", "environment", "timeout", "retries", "name")


class OrbitMQBackend(BaseBackend):  # type: ignore[misc]  # rhapsody-py is untyped
    def __init__(
        self,
        endpoint: str,
        *,
        url: str | None = None,
        settings: Settings | None = None,
        name: str = "orbit_mq",
    ) -> None:
        super().__init__(name=name)
        self.endpoint = endpoint
        self.settings = settings or load_settings(url=url)
        self.prefix = f"rh{secrets.token_hex(4)}"
        self._callback_func: Any = lambda task, state: None
        self._tasks: dict[str, dict[str, Any]] = {}  # orbit_mq uid -> rhapsody task
        self._fabric: Fabric | None = None
        self._proxy: Tasks | None = None
        self._watcher: TaskWatcher | None = None
        self._state = "INITIALIZED"

    def __await__(self) -> Any:
        return self._start().__await__()

    async def _start(self) -> OrbitMQBackend:
        if self._fabric is None:
            StateMapper.register_backend_states_with_defaults(backend=self)
            StateMapper.register_backend_tasks_states_with_defaults(backend=self)
            self._fabric = await Fabric(self.settings).open()
            self._proxy = await self._fabric.endpoint(self.endpoint).plugin(Tasks)
            self._watcher = TaskWatcher(self._proxy, self._on_status, running=True)
            await self._watcher.start()
            self._state = "RUNNING"
        return self

    @property
    def tasks(self) -> Tasks:
        if self._proxy is None:
            raise RuntimeError(
                "await the backend before using it: backend = await OrbitMQBackend(…)"
            )
        return self._proxy

    # -- BaseBackend -----------------------------------------------------------------------

    async def submit_tasks(self, tasks: list[dict[str, Any]]) -> None:
        specs = []
        for task in tasks:
            uid = f"{self.prefix}.{task['uid']}"
            self._tasks[uid] = task
            specs.append(self._spec(uid, task))
        assert self._watcher is not None
        self._watcher.watch(self._tasks)
        await submit(self.tasks, specs)

    async def cancel_task(self, uid: str) -> bool:
        canceled = await self.tasks.cancel_task(uid=f"{self.prefix}.{uid}")
        return canceled.state is TaskState.CANCELED

    async def cancel_all_tasks(self) -> int:
        count = 0
        for uid in list(self._tasks):  # the tasks not yet ended
            count += (await self.tasks.cancel_task(uid=uid)).state is TaskState.CANCELED
        return count

    async def shutdown(self) -> None:
        if self._watcher is not None:
            await self._watcher.close()
        if self._fabric is not None:
            await self._fabric.close()
        self._state = "SHUTDOWN"

    async def state(self) -> str:
        return self._state

    def task_state_cb(self, task: dict[str, Any] | None = None, state: str | None = None) -> None:
        """States come from the endpoint's events (see `_on_status`)."""

    def get_task_states_map(self) -> StateMapper:
        return StateMapper(backend=self)

    def build_task(self, *args: Any, **kwargs: Any) -> None:
        """Tasks are built on the endpoint."""

    # -- translation -----------------------------------------------------------------------

    def _spec(self, uid: str, task: dict[str, Any]) -> TaskSpec:
        extra = dict(task.get("task_backend_specific_kwargs") or {})
        fields: dict[str, Any] = {key: extra.pop(key) for key in _SPEC_FIELDS if key in extra}
        fields.update(uid=uid, backend_kwargs={k: v for k, v in extra.items() if is_json(v)})
        if task.get("executable"):
            return TaskSpec(
                executable=task["executable"],
                arguments=[str(a) for a in task.get("arguments") or []],
                **fields,
            )
        function = task.get("function")
        args, kwargs = list(task.get("args") or ()), dict(task.get("kwargs") or {})
        if isinstance(function, str):
            fields["function"] = function
        else:
            fields["pickled_function"] = pickled(function)
        if is_json(args) and is_json(kwargs):
            fields.update(args=args, kwargs=kwargs)
        else:
            fields["pickled_arguments"] = pickled((tuple(args), kwargs))
        return TaskSpec(**fields)

    async def _on_status(self, status: TaskStatus) -> None:
        task = self._tasks.get(status.uid)
        if task is None:
            return
        if status.state.final:
            task.update(stdout=status.stdout, stderr=status.stderr, exit_code=status.exit_code)
            try:
                value = await result(self.tasks, status)
                task["return_value"] = None if task.get("executable") else value
            except TaskFailed as failure:
                task["exception"] = failure
                task["return_value"] = None
            self._tasks.pop(status.uid, None)
        self._callback_func(task, status.state.value)
