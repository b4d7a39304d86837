"""Tasks on rhapsody-py's execution backends (dask, radical_pilot, dragon), where installed.

One `RhapsodyBackend` per backend name, started at its first task: the backend from
`rhapsody.backends.get_backend(name)` (configured by its own environment, e.g. a Dask
scheduler address), fed rhapsody task dicts, its state callbacks turned into the outcomes the
runner records. Python functions are resolved on the endpoint (imported, or unpickled: the
pickle rules apply as for the `concurrent` backend) and handed to the backend, which ships
them to its workers. A task's timeout and resources go into its
`task_backend_specific_kwargs` as `timeout`, `ranks`, `cores_per_rank` and `gpus_per_rank`,
with its own `backend_kwargs`.
"""

from __future__ import annotations

import asyncio
import importlib
import importlib.util
from collections.abc import Callable
from typing import Any

from orbit_mq.contracts.tasks.models import TASK_TAIL, TaskState
from orbit_mq.contracts.tasks.values import encode_value, unpickled
from orbit_mq.workers.logs import bounded_logger
from orbit_mq.workers.plugins.tasks.functions import Outcome, resolve

log = bounded_logger("orbit_mq.plugin.tasks")
# rhapsody-py's backends and the package each needs
RHAPSODY_BACKENDS = {"dask": "distributed", "radical_pilot": "radical.pilot", "dragon": "dragon"}
Started = Callable[[int], None]  # a task's id: it runs
Ended = Callable[[int, Outcome], None]


def installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a parent package missing
        return False


def missing(name: str) -> str | None:
    """What backend `name` lacks on this host, or None when it can run tasks here."""
    module = RHAPSODY_BACKENDS[name]
    if not installed("rhapsody") or not installed(module):
        return f"needs rhapsody-py and {module.split('.')[0]} on the endpoint"
    return None


class RhapsodyBackend:
    def __init__(self, name: str, started: Started, ended: Ended) -> None:
        self.name = name
        self.started = started
        self.ended = ended
        self._backend: Any = None
        self._ids: dict[str, int] = {}  # rhapsody uid -> task id
        self._starting = asyncio.Lock()
        self._loop = asyncio.get_running_loop()

    async def _get(self) -> Any:
        async with self._starting:
            if self._backend is None:
                from rhapsody.backends import get_backend

                backend = get_backend(self.name)
                backend = await backend  # rhapsody's backends initialise when awaited
                backend.register_callback(self._callback)
                self._backend = backend
                log.info("tasks: rhapsody-py backend %s started", self.name)
        return self._backend

    async def submit(self, works: list[tuple[int, str, dict[str, Any]]]) -> None:
        """Hand tasks (id, uid, spec fields) to the backend; outcomes come by callback."""
        tasks: list[dict[str, Any]] = []
        for task_id, uid, fields in works:
            try:
                tasks.append(self._task(task_id, uid, fields))
            except Exception as exc:  # the function cannot be found or unpickled here
                self.ended(task_id, Outcome(task_id, False, error=f"{type(exc).__name__}: {exc}"))
        if not tasks:
            return
        try:
            backend = await self._get()
            await backend.submit_tasks(tasks)
        except Exception as exc:  # the backend itself is unusable: say so for each task
            log.warning("tasks: backend %s refused %d tasks: %s", self.name, len(tasks), exc)
            for task in tasks:
                task_id = self._ids.pop(task["uid"])
                self.ended(task_id, Outcome(task_id, False, error=f"backend {self.name}: {exc}"))

    def _task(self, task_id: int, uid: str, fields: dict[str, Any]) -> dict[str, Any]:
        key = f"{uid}.{task_id}"
        extra = dict(fields.get("backend_kwargs") or {})
        extra.update({k: v for k, v in (fields.get("resources") or {}).items()})
        if fields.get("timeout"):
            extra["timeout"] = fields["timeout"]
        task: dict[str, Any] = {"uid": key, "task_backend_specific_kwargs": extra}
        if fields.get("executable"):
            task.update(executable=fields["executable"], arguments=fields.get("arguments", []))
        else:
            task["function"] = resolve(fields.get("function"), fields.get("pickled_function"))
            if fields.get("pickled_arguments"):
                args, kwargs = unpickled(fields["pickled_arguments"])
            else:
                args, kwargs = fields.get("args", []), fields.get("kwargs", {})
            task.update(args=tuple(args), kwargs=dict(kwargs))
        self._ids[key] = task_id
        return task

    def _callback(self, task: dict[str, Any], state: str) -> None:
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:  # a backend's own thread: over to the event loop
            running = None
        if running is not self._loop:
            self._loop.call_soon_threadsafe(self._callback, task, state)
            return
        task_id = self._ids.get(task.get("uid", ""))
        if task_id is None:
            return
        if state == TaskState.RUNNING:
            self.started(task_id)
        elif state in (TaskState.DONE, TaskState.FAILED, TaskState.CANCELED):
            del self._ids[task["uid"]]
            self.ended(task_id, _outcome(task_id, task, state))

    async def cancel(self, task_id: int) -> None:
        key = next((key for key, known in self._ids.items() if known == task_id), None)
        if key is not None and self._backend is not None:
            await self._backend.cancel_task(key)

    async def stop(self) -> None:
        if self._backend is not None:
            await self._backend.shutdown()


def _outcome(task_id: int, task: dict[str, Any], state: str) -> Outcome:
    out, err = str(task.get("stdout") or ""), str(task.get("stderr") or "")
    exit_code = task.get("exit_code")
    if state == TaskState.DONE:
        encoding, data = (None, None)
        if not task.get("executable"):
            encoding, data = encode_value(task.get("return_value"))
        return Outcome(
            task_id, True, encoding, data, None, None, out[-TASK_TAIL:], err[-TASK_TAIL:], exit_code
        )
    exception = task.get("exception")
    error = f"{type(exception).__name__}: {exception}" if exception else f"exit code {exit_code}"
    return Outcome(
        task_id,
        False,
        error="canceled by the backend" if state == TaskState.CANCELED else error,
        stdout=out[-TASK_TAIL:],
        stderr=err[-TASK_TAIL:],
        exit_code=exit_code,
    )
