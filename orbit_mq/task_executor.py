"""`TaskExecutor`: a `concurrent.futures.Executor` whose calls run on an endpoint.

    with orbit_mq.TaskExecutor("hpc1") as ex:
        squares = list(ex.map(square, range(10_000)))      # in order
        future = ex.submit("math:sqrt", 2.0)                # by import path

For plain (synchronous) programs: the executor runs its own event loop in a thread, with one
connection. The calls made while a submission is on its way go together in the next one (up
to 1,000 a request, pipelined); results come from the endpoint's `task_status_batch` events.
Functions given as objects travel cloudpickled (the endpoint must accept pickles from this user); a
string "module:name" travels as an import path. Arguments go as JSON where they are JSON,
pickled otherwise.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable
from concurrent.futures import Executor, Future
from typing import Any

from orbit_mq.client import Fabric
from orbit_mq.config import Settings, load_settings
from orbit_mq.contracts.tasks import Tasks, TaskSpec, TaskStatus
from orbit_mq.contracts.tasks.models import new_uid
from orbit_mq.contracts.tasks.values import is_json, pickled
from orbit_mq.errors import ConfigError
from orbit_mq.tasks import RECHECK_INTERVAL, TaskWatcher, result, submit
from orbit_mq.waiting import wait_within

BATCH = 1000  # calls per submission


class TaskExecutor(Executor):
    def __init__(
        self,
        endpoint: str,
        *,
        url: str | None = None,
        settings: Settings | None = None,
        timeout: float | None = None,
        retries: int = 0,
    ) -> None:
        """Run calls on `endpoint` (its tasks plugin); `timeout` and `retries` apply to each."""
        self.endpoint = endpoint
        self.settings = settings or load_settings(url=url)
        self.task_timeout = timeout
        self.retries = retries
        self._queue: list[tuple[TaskSpec, Future[Any]]] = []
        self._futures: dict[str, Future[Any]] = {}
        self._lock = threading.Lock()
        self._shutdown = False
        self._pickles: dict[int, tuple[Callable[..., Any], str]] = {}
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self._kick = asyncio.Event()
        self._submitted = asyncio.Event()
        self._tasks: Tasks | None = None
        self._fabric: Fabric | None = None
        try:
            self._call(self._open())
        except BaseException:
            self._stop_loop()
            raise

    # -- the Executor interface ------------------------------------------------------------

    def submit(self, fn: Callable[..., Any] | str, /, *args: Any, **kwargs: Any) -> Future[Any]:
        future: Future[Any] = Future()
        spec = self._spec(fn, args, kwargs)
        with self._lock:
            if self._shutdown:
                raise RuntimeError("cannot submit after shutdown")
            self._queue.append((spec, future))
        self._loop.call_soon_threadsafe(self._kick.set)
        return future

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        with self._lock:
            if self._shutdown:
                return
            self._shutdown = True
            if cancel_futures:
                for _, future in self._queue:
                    future.cancel()
        self._loop.call_soon_threadsafe(self._kick.set)
        if not wait:  # the calls made still end, and their futures with them
            asyncio.run_coroutine_threadsafe(self._finish(), self._loop)
            return
        self._call(self._finish())
        self._thread.join(timeout=10)

    async def _finish(self) -> None:
        with contextlib.suppress(Exception):
            await self._drained()
        await self._close()
        self._loop.call_soon(self._loop.stop)

    # -- building tasks --------------------------------------------------------------------

    def _spec(
        self, fn: Callable[..., Any] | str, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> TaskSpec:
        if isinstance(fn, str):
            work: dict[str, Any] = {"function": fn}
        elif callable(fn):
            work = {"pickled_function": self._pickled(fn)}
        else:
            raise ConfigError(f"{fn!r} is neither a callable nor a 'module:name' string")
        if is_json(list(args)) and is_json(kwargs):
            work.update(args=list(args), kwargs=kwargs)
        else:
            work.update(pickled_arguments=pickled((args, kwargs)))
        return TaskSpec(uid=new_uid(), timeout=self.task_timeout, retries=self.retries, **work)

    def _pickled(self, fn: Callable[..., Any]) -> str:
        cached = self._pickles.get(id(fn))
        if cached is None or cached[0] is not fn:
            cached = self._pickles[id(fn)] = (fn, pickled(fn))
            if len(self._pickles) > 256:
                self._pickles.pop(next(iter(self._pickles)))
        return cached[1]

    # -- the loop's side -------------------------------------------------------------------

    def _call(self, coroutine: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result()

    def _stop_loop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)

    async def _open(self) -> None:
        self._fabric = await Fabric(self.settings).open()
        self._tasks = await self._fabric.endpoint(self.endpoint).plugin(Tasks)
        self._watcher = TaskWatcher(self._tasks, self._resolve)
        await self._watcher.start()  # before any submission
        self._workers = [asyncio.create_task(self._pump(), name="orbit-executor-submit")]

    async def _close(self) -> None:
        for task in self._workers:
            task.cancel()
        await asyncio.gather(*self._workers, return_exceptions=True)
        await self._watcher.close()
        if self._fabric is not None:
            await self._fabric.close()

    async def _drained(self) -> None:
        while True:
            with self._lock:
                busy = bool(self._queue) or any(not f.done() for f in self._futures.values())
            if not busy:
                return
            self._submitted.clear()
            with contextlib.suppress(TimeoutError):
                await wait_within(self._submitted.wait(), RECHECK_INTERVAL)

    async def _pump(self) -> None:
        assert self._tasks is not None
        while True:
            await self._kick.wait()
            # No lingering: the calls made while one submission is on its way share the next.
            self._kick.clear()
            with self._lock:
                taken, self._queue = self._queue, []
            live = [(spec, f) for spec, f in taken if f.set_running_or_notify_cancel()]
            for spec, future in live:
                assert spec.uid is not None
                self._futures[spec.uid] = future
            self._watcher.watch(spec.uid for spec, _ in live if spec.uid)
            try:
                await submit(self._tasks, [spec for spec, _ in live], batch_size=BATCH)
            except Exception as exc:  # the endpoint refused them: their futures say why
                for spec, future in live:
                    self._futures.pop(spec.uid or "", None)
                    self._watcher.watched.discard(spec.uid or "")
                    future.set_exception(exc)
            self._submitted.set()

    async def _resolve(self, status: TaskStatus) -> None:
        assert self._tasks is not None
        future = self._futures.pop(status.uid, None)
        if future is None or future.done():
            return
        try:
            future.set_result(await result(self._tasks, status))
        except Exception as exc:
            future.set_exception(exc)
        self._submitted.set()
