"""`psij` on the endpoint: the psij contract (orbit_mq/contracts/psij) implemented with PSI/J
executors, a durable journal and strongly ordered `job_status` events.
"""

from __future__ import annotations

import asyncio
import dataclasses
import shutil
import time
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import BaseModel, NonNegativeFloat, NonNegativeInt

from orbit_mq.contracts import psij as contract
from orbit_mq.contracts.psij import (
    Job,
    JobList,
    JobNotEnded,
    JobNotFound,
    JobSpec,
    JobState,
    JobStatus,
    JobStatusEvent,
    Limit,
    NotJobOwner,
    TunneledJobSpec,
    TunnelMode,
    TunnelStatus,
)
from orbit_mq.rpc import INJECTED, CallContext, Session
from orbit_mq.workers.logs import bounded_logger
from orbit_mq.workers.plugin import Plugin, wait_budget
from orbit_mq.workers.plugins.psij import executors as ex
from orbit_mq.workers.plugins.psij.files import JobDir, read_page
from orbit_mq.workers.plugins.psij.monitor import recover, watch
from orbit_mq.workers.plugins.psij.retention import (
    DEFAULT_INTERVAL,
    Ended,
    Retention,
    choose,
    directory_sizes,
    from_environment,
)
from orbit_mq.workers.plugins.psij.scheduler import bound
from orbit_mq.workers.plugins.psij.store import JobRow, JobStore
from orbit_mq.workers.plugins.psij.tracker import LiveJob, Tracker
from orbit_mq.workers.plugins.psij.tunneled import Tunnels
from orbit_mq.workers.tunnels.settings import TunnelSettings

if TYPE_CHECKING:
    import psij

log = bounded_logger("orbit_mq.plugin.psij")


def _resolve(path: str | None, directory: Path) -> Path | None:
    if path is None:
        return None
    candidate = Path(path).expanduser()
    return candidate if candidate.is_absolute() else directory / candidate


class PsiJ(Plugin, contract.PsiJ):
    # Per-executor options or ready psij.JobExecutorConfig objects (see executors.py);
    # ORBIT_MQ_PSIJ_{EXECUTOR}_{OPTION} environment variables override the options.
    executor_options: ClassVar[dict[str, Any]] = {}
    # Per-executor custom attributes every job gets unless it sets them itself.
    site_custom_attributes: ClassVar[dict[str, dict[str, Any]]] = {}
    queue_polling_interval: ClassVar[int] = 5  # s, batch executors (PSI/J's default: 30)
    # Adaptive polling (scheduler.py): the floor just after a change, the ceiling for jobs
    # long unchanged; ORBIT_MQ_PSIJ_POLL_FLOOR / _CEILING override them.
    poll_floor: ClassVar[float] = 1.0
    poll_ceiling: ClassVar[float] = 30.0
    output_page_size: ClassVar[int] = 1024 * 1024  # bytes per stream per get_job_status
    stream_interval: ClassVar[float] = 0.5  # s between job_output polls
    # SSH tunnels of submit_tunneled; None: from ORBIT_MQ_TUNNEL_* (see workers/tunnels).
    tunnel_settings: ClassVar[TunnelSettings | None] = None
    # Pruning of ended jobs ("30d", "10G", "30d,10G"); ORBIT_MQ_PSIJ_RETENTION overrides it
    # (see retention.py). None: ended jobs stay until removed.
    retention: ClassVar[str | None] = None
    retention_interval: ClassVar[float] = DEFAULT_INTERVAL  # s; ORBIT_MQ_PSIJ_RETENTION_INTERVAL

    async def start(self) -> None:
        await super().start()
        context = self.context
        # Absolute: job directories are handed to other processes (launchers, batch jobs).
        self.home = context.settings.home.expanduser().absolute()
        self.root = self.home / "endpoints" / context.endpoint
        self.store = JobStore(context.journal.db)
        self.tunnels = Tunnels(self, self.tunnel_settings)
        # Deliberately on the loop's (main) thread: psij's local executor installs its
        # SIGCHLD handler only when psij is first imported from the main thread.
        self.pool = ex.ExecutorPool(
            self.root / "psij", self.executor_options, self.queue_polling_interval
        )
        self.tracker = Tracker(context.journal, self.store, self.emit, self.pool)
        self.tracker.start()
        await recover(self.tracker, [self._revived(row) for row in self.store.unfinished()])
        self.tunnels.restore()
        polling = (bound("floor", self.poll_floor), bound("ceiling", self.poll_ceiling))
        self._watcher = asyncio.create_task(watch(self.tracker, self.stream_interval, *polling))
        self._background = [self._watcher]
        self.pruned = 0
        self.retention_policy = from_environment(self.retention, self.retention_interval)
        if self.retention_policy is not None:
            self.log.info(
                "psij retention: removing ended jobs %s", self.retention_policy.describe()
            )
            self._background.append(asyncio.create_task(self._retain(self.retention_policy)))

    async def stop(self) -> None:
        await self.tunnels.stop()  # tunnels go with the plugin; their jobs keep running
        for task in self._background:
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
        await self.tracker.stop()
        await asyncio.to_thread(self.pool.close)

    async def emit(
        self,
        topic: str,
        data: BaseModel | dict[str, Any],
        key: str | None = None,
        *,
        owner: str | None = None,
    ) -> None:
        await super().emit(topic, data, key, owner=owner)
        if isinstance(data, JobStatusEvent):
            self.tunnels.job_changed(data)  # tunnel watchers follow their jobs

    async def health_details(self) -> dict[str, Any]:
        policy = self.retention_policy
        return {
            "jobs": self.store.counts(),
            "running": len(self.tracker.live),
            "executors": self.pool.available,
            # what a job's custom_attributes are merged over, per executor
            "site_defaults": {
                name: ex.site_custom_attributes(name, self.site_custom_attributes.get(name, {}))
                for name in self.pool.available
            },
            "polling_interval": dict(self.pool.intervals),
            "scheduler_calls_last_minute": self.pool.calls.last_minute(),
            "retention": None if policy is None else dataclasses.asdict(policy),
            "pruned": self.pruned,
        }

    async def running_work(self) -> int:
        return len(self.tracker.live)

    # -- the API ---------------------------------------------------------------------------

    async def submit_job(
        self,
        spec: JobSpec,
        executor: str = "local",
        stream_output: bool = False,
        *,
        ctx: CallContext = INJECTED,
        session: Session | None = INJECTED,
    ) -> Job:
        keys = [ctx.message_id] if ctx.message_id else None
        infos = await self._submit(ctx.user, [spec], executor, stream_output, session, keys)
        return infos[0]

    async def submit_jobs(
        self,
        specs: list[JobSpec],
        executor: str = "local",
        stream_output: bool = False,
        *,
        ctx: CallContext = INJECTED,
        session: Session | None = INJECTED,
    ) -> list[Job]:
        keys = [f"{ctx.message_id}#{i}" for i in range(len(specs))] if ctx.message_id else None
        return await self._submit(ctx.user, specs, executor, stream_output, session, keys)

    async def get_job_status(
        self, job_id: str, stdout_offset: NonNegativeInt = 0, stderr_offset: NonNegativeInt = 0
    ) -> JobStatus:
        row = self._owned(job_id)
        history = self.store.history(job_id)  # read with the row: one consistent snapshot
        page, complete = self.output_page_size, row.state.final
        (out, out_end), (err, err_end) = await asyncio.to_thread(
            lambda: (
                read_page(row.stdout_path, stdout_offset, page, complete),
                read_page(row.stderr_path, stderr_offset, page, complete),
            )
        )
        attributes = row.spec.get("attributes") or {}
        return JobStatus(
            **row.info().model_dump(),
            executable=row.spec["executable"],
            arguments=row.spec.get("arguments") or [],
            directory=row.spec.get("directory"),
            queue=attributes.get("queue_name"),
            account=attributes.get("account"),
            stdout=out,
            stderr=err,
            stdout_offset=out_end,
            stderr_offset=err_end,
            history=history,
        )

    async def list_jobs(
        self,
        state: JobState | None = None,
        session: str | None = None,
        offset: NonNegativeInt = 0,
        limit: Limit = 100,
        ended_before: datetime | None = None,
    ) -> JobList:
        before = None if ended_before is None else ended_before.timestamp()
        owners = self.context.ownership.visible_owners()
        rows, total = self.store.page(state, session, offset, limit, before, owners)
        return JobList(jobs=[row.info() for row in rows], total=total, offset=offset, limit=limit)

    async def cancel_job(self, job_id: str) -> Job:
        if not self._owned(job_id).state.final:
            await self.tracker.cancel(job_id)
        return self._row(job_id).info()

    async def remove_job(self, job_id: str) -> Job:
        row = self._owned(job_id)
        if not row.state.final or job_id in self.tracker.live:
            raise JobNotEnded(
                f"job {job_id} is {row.state.value}: cancel it, then remove it once it ended",
                {"job_id": job_id, "state": row.state.value},
            )
        await self._forget([Ended(job_id, row.job_dir, row.updated)])
        self.log.info("removed job %s and its directory %s", job_id, row.job_dir)
        return row.info()

    async def wait_jobs(
        self,
        job_ids: list[str],
        timeout: NonNegativeFloat | None = None,
        *,
        ctx: CallContext = INJECTED,
    ) -> list[Job]:
        unique = list(dict.fromkeys(job_ids))
        found = self.store.many(unique)
        missing = sorted(set(unique) - {row.job_id for row in found})
        if missing:
            raise JobNotFound(f"no such job: {', '.join(missing)}", {"job_ids": missing})
        self._check_owner(found)
        live = [self.tracker.live[job_id] for job_id in unique if job_id in self.tracker.live]
        budget = wait_budget(timeout, ctx)
        if live and (budget is None or budget > 0):
            waits = [asyncio.ensure_future(job.done.wait()) for job in live]
            try:
                await asyncio.wait(waits, timeout=budget)
            finally:
                for wait in waits:
                    wait.cancel()
        rows = {row.job_id: row for row in self.store.many(unique)}
        return [rows[job_id].info() for job_id in job_ids]

    async def submit_tunneled(
        self,
        spec: TunneledJobSpec,
        executor: str = "local",
        tunnel: TunnelMode = "none",
        stream_output: bool = False,
        *,
        ctx: CallContext = INJECTED,
        session: Session | None = INJECTED,
    ) -> Job:
        return await self.tunnels.submit(ctx, spec, executor, tunnel, stream_output, session)

    async def tunnel_status(self, name: str) -> TunnelStatus:
        return await self.tunnels.status(name)

    async def executors(self) -> list[str]:
        return list(self.pool.available)

    # -- helpers ---------------------------------------------------------------------------

    async def _forget(self, jobs: list[Ended]) -> None:
        """Remove ended jobs: their journal rows, then their directories."""
        with self.context.journal.transaction():
            self.store.remove([job.job_id for job in jobs])
        # The files go after the rows: a crash in between leaves directories nobody lists.
        await asyncio.get_running_loop().run_in_executor(
            self.context.executor, _remove_directories, [job.job_dir for job in jobs]
        )

    async def _retain(self, policy: Retention) -> None:
        """Prune ended jobs by the retention policy, every policy.interval s."""
        while True:
            try:
                await self._prune(policy)
            except Exception:  # the next round tries again
                self.log.exception("psij retention: a pruning round failed")
            await asyncio.sleep(policy.interval)

    async def _prune(self, policy: Retention) -> None:
        # Ended in the journal and no longer followed: what the tracker holds may still be
        # flushing its last output.
        ended = [job for job in self.store.ended() if job.job_id not in self.tracker.live]
        if not ended:
            return
        sizes: dict[str, int] = {}
        if policy.max_bytes is not None:
            sizes = await asyncio.to_thread(directory_sizes, ended)
        chosen = set(choose(ended, sizes, policy, time.time()))
        if not chosen:
            return
        doomed = [job for job in ended if job.job_id in chosen]
        await self._forget(doomed)
        self.pruned += len(doomed)
        freed = sum(sizes.get(job.job_id, 0) for job in doomed)
        shown = ", ".join(job.job_id for job in doomed[:20])
        more = f" and {len(doomed) - 20} more" if len(doomed) > 20 else ""
        self.log.info(
            "psij retention (%s): removed %d ended jobs%s: %s%s",
            policy.describe(),
            len(doomed),
            f", {freed} bytes" if sizes else "",
            shown,
            more,
        )

    def _row(self, job_id: str) -> JobRow:
        row = self.store.get(job_id)
        if row is None:
            raise JobNotFound(f"no job {job_id!r} on this endpoint", {"job_id": job_id})
        return row

    def _owned(self, job_id: str) -> JobRow:
        """The job `job_id`, if the caller may act on it."""
        row = self._row(job_id)
        self._check_owner([row])
        return row

    def _check_owner(self, rows: list[JobRow]) -> None:
        """Refuse the call unless its caller owns every job of `rows` or is an admin."""
        owners = {row.job_id: row.user for row in rows}
        self.context.ownership.check(owners, NotJobOwner, "job", "job_id")

    async def _submit(
        self,
        user: str,
        specs: list[JobSpec],
        executor: str,
        stream_output: bool,
        session: Session | None,
        keys: list[str] | None,
    ) -> list[Job]:
        self.pool.check(executor)
        if keys:
            # The reply of a repeated request normally comes from the dispatcher; this covers
            # an endpoint killed after creating the jobs but before it stored the reply.
            existing = self.store.by_request(keys)
            if existing:
                self._check_owner(existing)  # a message_id is no way into another's jobs
                return [row.info() for row in existing]
        session_id = session.id if session is not None else None
        request_keys: list[str | None] = list(keys) if keys else [None] * len(specs)
        jobs = [
            self._new(user, spec, executor, stream_output, session_id, key)
            for spec, key in zip(specs, request_keys, strict=True)
        ]
        # Recorded, the jobs run whatever happens to this call (and after a restart too).
        handing = await self.tracker.create(jobs)
        await asyncio.shield(handing)
        await self.tracker.barrier()
        return [job.row.info() for job in jobs]  # the tracker keeps them as journaled

    def _new(
        self,
        user: str,
        spec: JobSpec,
        executor: str,
        stream_output: bool,
        session: str | None,
        key: str | None,
    ) -> LiveJob:
        """A job ready to record: its id, directory, paths and the psij spec to submit (every
        check that can refuse it runs here, before anything is created)."""
        ex.check_launcher(spec)
        spec = self._with_site_defaults(spec, executor)
        psij_job = ex.new_job()
        job_dir = JobDir.of(self.home, self.context.endpoint, psij_job.id)
        directory = _resolve(spec.directory, Path.cwd()) or job_dir.work
        stdout = _resolve(spec.stdout_path, directory) or job_dir.stdout
        stderr = _resolve(spec.stderr_path, directory) or job_dir.stderr
        # The stored spec says where the job ran and wrote, as spec.json shows it.
        spec = spec.model_copy(
            update={
                "directory": str(directory),
                "stdout_path": str(stdout),
                "stderr_path": str(stderr),
            }
        )
        now = time.time()
        row = JobRow(
            job_id=psij_job.id,
            executor=executor,
            native_id=None,
            state=JobState.NEW,
            seq=1,
            exit_code=None,
            message=None,
            submitted=now,
            updated=now,
            name=spec.name or spec.executable,
            session=session,
            user=user,
            cancel_requested=False,
            stream_output=stream_output,
            stdout_sent=0,
            stderr_sent=0,
            spec=spec.model_dump(mode="json"),
            job_dir=job_dir.root,
            stdout_path=stdout,
            stderr_path=stderr,
            exit_file=job_dir.exit_code if executor == ex.LOCAL else None,
            request_key=key,
        )
        return LiveJob(row, psij_job=psij_job, psij_spec=self._psij_spec(row))

    def _revived(self, row: JobRow) -> LiveJob:
        """A journaled unfinished job, to re-attach after a restart."""
        return LiveJob(row, psij_spec=self._psij_spec(row))

    def _psij_spec(self, row: JobRow) -> psij.JobSpec:
        spec = JobSpec.model_validate(row.spec)
        directory = Path(spec.directory) if spec.directory else row.job_dir / "work"
        # Every job learns who it is and where its files are (as psik's jobs do).
        own = {
            "ORBIT_MQ_JOB_ID": row.job_id,
            "ORBIT_MQ_JOB_DIR": str(row.job_dir),
            "ORBIT_MQ_ENDPOINT": self.context.endpoint,
        }
        spec = spec.model_copy(update={"environment": {**spec.environment, **own}})
        plan = JobDir(row.job_dir).staging_plan if spec.staged else None
        paths = (row.stdout_path, row.stderr_path, row.exit_file, plan)
        return ex.psij_spec(spec, directory, *paths)

    def _with_site_defaults(self, spec: JobSpec, executor: str) -> JobSpec:
        configured = self.site_custom_attributes.get(executor, {})
        defaults = ex.site_custom_attributes(executor, configured)
        given = spec.attributes.custom_attributes
        added = sorted(set(defaults) - set(given))
        if not added:
            return spec
        log.info("psij: %s site defaults added to a job: %s", executor, ", ".join(added))
        merged = {**defaults, **given}
        attributes = spec.attributes.model_copy(update={"custom_attributes": merged})
        return spec.model_copy(update={"attributes": attributes})


def _remove_directories(directories: list[Path]) -> None:
    for directory in directories:
        shutil.rmtree(directory, ignore_errors=True)
