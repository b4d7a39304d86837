"""Child endpoints as batch jobs, reached through SSH tunnels (`submit_tunneled`, `tunnel_status`).

The child is `orbit-mq endpoint start -n NAME …` run as a job. Each submission gets a watcher
that follows the job's job_status transitions:

* none: the child connects to the broker itself; the watcher only reserves the name.
* forward: the child opens the tunnel itself (`--tunnel forward --tunnel-via <this host>`) and
  writes its local port into the rendezvous file, which `tunnel_status` reads.
* reverse: once the job is ACTIVE, the watcher finds its node (setting, batch system, or the
  child's own announcement in the rendezvous file), logs in there, opens a remote forward to the
  broker and writes its port into the rendezvous file, where the child reads it. If the login
  fails for the whole retry window, or the tunnel fails later, the job is ended FAILED with the
  reason and cancelled. The tunnel goes when the job ends or the plugin stops.

Watchers are journaled (tunnel_journal.py): when the endpoint starts again, the watchers of
jobs still running are started again (a reverse tunnel is opened anew and its port written to
the rendezvous file, where the child finds it when it reconnects), and tunnel_status reports
the children of ended jobs as done.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from orbit_mq.contracts.psij.errors import (
    EndpointNameMissing,
    NotJobOwner,
    TunnelConflict,
    TunnelError,
)
from orbit_mq.contracts.psij.models import (
    Job,
    JobSpec,
    JobState,
    JobStatusEvent,
    TunneledJobSpec,
    TunnelMode,
    TunnelStatus,
)
from orbit_mq.errors import InvalidRequest
from orbit_mq.protocol import check_name
from orbit_mq.rpc import CallContext, Session
from orbit_mq.workers.logs import bounded_logger
from orbit_mq.workers.plugins.psij.endings import Report
from orbit_mq.workers.plugins.psij.tunnel_journal import TunnelJournal, Watched
from orbit_mq.workers.tunnels import rendezvous
from orbit_mq.workers.tunnels.arguments import (
    default_command,
    endpoint_name,
    has_option,
    inherited_environment,
    option_value,
    tunnel_arguments,
)
from orbit_mq.workers.tunnels.nodes import find_node
from orbit_mq.workers.tunnels.rendezvous import Rendezvous
from orbit_mq.workers.tunnels.settings import (
    Address,
    TunnelSettings,
    broker_address,
    parse_address,
)
from orbit_mq.workers.tunnels.tunnel import ReverseTunnel, Tunnel, TunnelState

if TYPE_CHECKING:
    from orbit_mq.workers.plugins.psij.plugin import PsiJ

log = bounded_logger("orbit_mq.plugin.psij")


@dataclass(eq=False)
class Watcher:
    name: str
    mode: TunnelMode
    rendezvous: Path
    job_id: str = ""
    executor: str = "local"
    native_id: str | None = None
    state: JobState = JobState.NEW
    failure: str | None = None
    finished: bool = False
    node: Address | None = None
    tunnel: Tunnel | None = None
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None

    async def until(self, done: Callable[[], bool]) -> None:
        """Wait for a job transition or tunnel change after which `done()` holds."""
        while not done():
            self.changed.clear()
            if done():
                return
            await self.changed.wait()


class Tunnels:
    """The psij plugin's tunnel watchers, by child endpoint name."""

    def __init__(self, plugin: PsiJ, settings: TunnelSettings | None) -> None:
        self.plugin = plugin
        self.settings = settings or TunnelSettings()
        self.watchers: dict[str, Watcher] = {}
        self._by_job: dict[str, Watcher] = {}
        self.journal = TunnelJournal(plugin.context.journal.db)

    def restore(self) -> None:
        """Follow again the children the journal holds (at start, after the jobs were taken
        back); forget those whose jobs were removed."""
        gone = []
        for watched in self.journal.all():
            row = self.plugin.store.get(watched.job_id)
            if row is None:
                gone.append(watched.name)
                continue
            watcher = Watcher(
                watched.name,
                watched.mode,
                watched.rendezvous,
                job_id=watched.job_id,
                executor=watched.executor,
                native_id=row.native_id,
                state=row.state,
                finished=row.state.final,
            )
            self.watchers[watched.name] = watcher
            if not row.state.final:
                self._start(watcher)
                log.info("following %s tunnel of %r again (job %s)", watcher.mode,
                         watcher.name, watcher.job_id)  # fmt: skip
        if gone:
            with self.plugin.context.journal.transaction():
                self.journal.forget(gone)

    # -- the two methods -------------------------------------------------------------------

    async def submit(
        self,
        ctx: CallContext,
        spec: TunneledJobSpec,
        executor: str,
        mode: TunnelMode,
        stream_output: bool,
        session: Session | None,
    ) -> Job:
        job_spec, name, path = self._prepare(spec, mode)
        current = self.watchers.get(name)
        if current is not None and not (current.finished or current.state.final):
            job = current.job_id or "being submitted"
            raise TunnelConflict(
                f"a tunneled endpoint {name!r} is already watched (job {job}); cancel that job "
                "first or choose another -n/--name",
                {"name": name, "job_id": current.job_id},
            )
        watcher = self.watchers[name] = Watcher(name, mode, path, executor=executor)
        try:
            if mode != "none":
                await asyncio.to_thread(rendezvous.remove, path)  # a previous child's
            keys = [ctx.message_id] if ctx.message_id else None
            infos = await self.plugin._submit(
                ctx.user, [job_spec], executor, stream_output, session, keys
            )
        except BaseException:
            del self.watchers[name]
            raise
        info = infos[0]
        watcher.job_id, watcher.native_id, watcher.state = info.job_id, info.native_id, info.state
        with self.plugin.context.journal.transaction():
            self.journal.record(Watched(name, mode, path, info.job_id, executor))
        self._start(watcher)
        log.info("submit_tunneled %s: endpoint %r is job %s", mode, name, info.job_id)
        return info

    def _start(self, watcher: Watcher) -> None:
        self._by_job[watcher.job_id] = watcher
        watcher.task = asyncio.create_task(self._follow(watcher), name=f"tunnel-{watcher.name}")

    async def status(self, name: str) -> TunnelStatus:
        watcher = self.watchers.get(name)
        if watcher is None:
            return TunnelStatus(name=name, status="no_tunnel", message="no such tunneled endpoint")
        self._check_owner(watcher)
        found = TunnelStatus(name=name, status="pending", mode=watcher.mode, job_id=watcher.job_id)
        tunnel = watcher.tunnel
        if tunnel is not None:
            found.port, found.reconnects = tunnel.port, tunnel.reconnects
        found.node = str(watcher.node) if watcher.node else None
        if watcher.mode == "none":
            found.status = "no_tunnel"
        elif watcher.failure is not None:
            found.status, found.message = "failed", watcher.failure
        elif watcher.finished or watcher.state.final:
            found.status = "failed" if watcher.state is JobState.FAILED else "done"
            row = self.plugin.store.get(watcher.job_id)
            found.message = row.message if row is not None else None
        elif watcher.mode == "reverse":
            active = tunnel is not None and tunnel.state is TunnelState.ACTIVE
            found.status = "active" if active else "pending"
        else:  # forward: the child reports its port through the rendezvous file
            info = await asyncio.to_thread(rendezvous.read, watcher.rendezvous)
            if info is not None and info.port and watcher.state is JobState.ACTIVE:
                found.status, found.port, found.node = "active", info.port, info.node
        return found

    def _check_owner(self, watcher: Watcher) -> None:
        """Refuse the call unless its caller owns the watcher's job or is an admin (a job not
        recorded, or no longer, counts as the endpoint's own user's)."""
        row = self.plugin.store.get(watcher.job_id) if watcher.job_id else None
        owners = {watcher.name: row.user if row is not None else None}
        self.plugin.context.ownership.check(owners, NotJobOwner, "tunneled endpoint", "name")

    def job_changed(self, event: JobStatusEvent) -> None:
        """A job_status event of this plugin (called as it is emitted)."""
        watcher = self._by_job.get(event.job_id)
        if watcher is not None:
            watcher.state = event.state
            watcher.native_id = watcher.native_id or event.native_id
            watcher.changed.set()

    async def stop(self) -> None:
        running = [w.task for w in self.watchers.values() if w.task is not None]
        for task in running:
            task.cancel()
        await asyncio.gather(*running, return_exceptions=True)

    # -- preparing the job -----------------------------------------------------------------

    def _prepare(self, spec: TunneledJobSpec, mode: TunnelMode) -> tuple[JobSpec, str, Path]:
        """The job to submit, the child's name and its rendezvous file; refuses bad requests."""
        if spec.executable:
            executable, arguments = spec.executable, list(spec.arguments)
        else:
            executable, arguments = default_command(spec.arguments)
        name = endpoint_name(arguments)
        if name is None:
            raise EndpointNameMissing(
                "submit_tunneled needs the child endpoint's name: put -n/--name NAME into "
                "spec.arguments",
                {"field": "spec.arguments"},
            )
        try:
            check_name("endpoint", name)
        except ValueError as exc:
            raise InvalidRequest(f"spec.arguments: {exc}", {"field": "spec.arguments"}) from None
        if has_option(arguments, "--tunnel"):
            raise InvalidRequest(
                "leave --tunnel out of spec.arguments: submit_tunneled adds it from `tunnel`",
                {"field": "spec.arguments"},
            )
        given = option_value(arguments, "--rendezvous")
        path = Path(given) if given else self.settings.rendezvous_file(self.plugin.home, name)
        via = self.settings.ssh_address(self.settings.via or socket.gethostname())
        arguments = tunnel_arguments(arguments, mode, path, via, self._target())
        environment = dict(spec.environment)
        if mode == "forward":  # the child logs in with this endpoint's SSH settings
            environment = inherited_environment(self.settings, environment)
        fields = spec.model_dump(exclude={"executable", "arguments", "environment"})
        job = JobSpec.model_validate(
            {**fields, "executable": executable, "arguments": arguments, "environment": environment}
        )
        return job, name, path

    def _target(self) -> Address:
        """The broker as this endpoint reaches it."""
        if self.settings.target:
            return parse_address(self.settings.target, None, "ORBIT_MQ_TUNNEL_TARGET")
        return broker_address(self.plugin.context.settings.url)

    # -- following the job -----------------------------------------------------------------

    async def _follow(self, watcher: Watcher) -> None:
        try:
            if watcher.mode == "reverse":
                await self._reverse(watcher)
            else:
                await watcher.until(lambda: watcher.state.final)
        except TunnelError as exc:
            await self._fail(watcher, str(exc))
        except Exception as exc:
            log.exception("tunnel watcher of %r failed", watcher.name)
            await self._fail(watcher, f"internal error: {type(exc).__name__}: {exc}")
        finally:
            await self._tear_down(watcher)

    async def _reverse(self, watcher: Watcher) -> None:
        await watcher.until(lambda: watcher.state is JobState.ACTIVE or watcher.state.final)
        node = None
        if not watcher.state.final:
            node = await find_node(
                self.settings, watcher.executor, watcher.native_id, watcher.rendezvous,
                ended=lambda: watcher.state.final,
            )  # fmt: skip
        if node is None:
            return  # the job ended first
        watcher.node = node
        loop = asyncio.get_running_loop()

        def changed(_: Tunnel) -> None:
            with contextlib.suppress(RuntimeError):  # the loop is closed: the endpoint is gone
                loop.call_soon_threadsafe(watcher.changed.set)

        tunnel = ReverseTunnel(node, self._target(), self.settings, on_change=changed)
        watcher.tunnel = tunnel
        opening = asyncio.ensure_future(asyncio.to_thread(tunnel.open))
        opening.add_done_callback(lambda _: watcher.changed.set())
        try:
            await watcher.until(lambda: opening.done() or watcher.state.final)
        finally:
            if not opening.done():  # the job ended (or the plugin stops) while logging in
                await asyncio.to_thread(tunnel.close)
                with contextlib.suppress(TunnelError):
                    await opening
        if watcher.state.final:
            return
        opening.result()  # raises the TunnelError that ended the login attempts
        published = [await self._publish(watcher, tunnel)]
        while True:
            await watcher.until(
                lambda: (
                    watcher.state.final
                    or tunnel.state is TunnelState.FAILED
                    or tunnel.port != published[0]
                )
            )
            if watcher.state.final:
                return
            if tunnel.state is TunnelState.FAILED:
                raise TunnelError(tunnel.reason or "the tunnel failed")
            published[0] = await self._publish(watcher, tunnel)  # it moved to another port

    async def _publish(self, watcher: Watcher, tunnel: Tunnel) -> int | None:
        info = Rendezvous(
            endpoint=watcher.name,
            mode="reverse",
            port=tunnel.port,
            node=str(watcher.node),
            pid=os.getpid(),
        )
        await asyncio.to_thread(rendezvous.write, watcher.rendezvous, info)
        log.info("reverse tunnel for %r: port %s on %s", watcher.name, tunnel.port, watcher.node)
        return tunnel.port

    async def _fail(self, watcher: Watcher, reason: str) -> None:
        """Record why the tunnel failed, end the job FAILED with it, cancel the job."""
        watcher.failure = reason
        tracker = self.plugin.tracker
        live = tracker.live.get(watcher.job_id)
        if live is None:
            return  # it ended already
        log.warning(
            "tunnel of %r failed (%s): cancelling job %s", watcher.name, reason, watcher.job_id
        )
        # Recorded before the cancel, so the job ends FAILED with the reason, not CANCELED.
        tracker.report(
            watcher.job_id, Report(JobState.FAILED, time.time(), message=f"tunnel failed: {reason}")
        )
        await tracker.barrier()
        if live.psij_job is not None and live.submitted:
            try:
                await asyncio.to_thread(live.psij_job.cancel)
            except Exception as exc:  # e.g. it ended meanwhile
                log.info("cancelling job %s: %s", watcher.job_id, exc)

    async def _tear_down(self, watcher: Watcher) -> None:
        if watcher.tunnel is not None:
            await asyncio.to_thread(watcher.tunnel.close)
        ended = watcher.state.final or watcher.failure
        replaced = self.watchers.get(watcher.name) is not watcher  # its file is the new one's
        if watcher.mode != "none" and ended and not replaced:
            await asyncio.to_thread(rendezvous.remove, watcher.rendezvous)
        watcher.finished = True
        self._by_job.pop(watcher.job_id, None)
        log.info(
            "tunnel watcher of %r ended (job %s %s)", watcher.name, watcher.job_id, watcher.state
        )
