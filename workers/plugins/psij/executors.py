"""PSI/J executors on this endpoint: which are installed, how each is configured, and how a
`JobSpec` becomes a `psij.JobSpec`. psij is imported only here, and only inside functions.

Executor configuration, later sources winning:
1. defaults: `work_directory` = `$ORBIT_MQ_HOME/endpoints/{endpoint}/psij` (batch executors
   add `/{executor}`; on a cluster it must be on a filesystem the compute nodes see), and for
   batch executors `queue_polling_interval` = `PsiJ.queue_polling_interval` (5 s; PSI/J's own
   30 s is slow for interactive use) and `initial_queue_polling_delay` = 1 s;
2. the class attribute `PsiJ.executor_options[executor]`: a dict of options, or a ready
   `psij.JobExecutorConfig`, used as it is;
3. the environment: `ORBIT_MQ_PSIJ_{EXECUTOR}_{OPTION}`, e.g.
   `ORBIT_MQ_PSIJ_SLURM_QUEUE_POLLING_INTERVAL=1`, `ORBIT_MQ_PSIJ_PBS_KEEP_FILES=1` (keep the
   generated submit scripts to diagnose a site), `ORBIT_MQ_PSIJ_SLURM_WORK_DIRECTORY=/scratch/x`.

Site default custom attributes (e.g. `{"pbs.filesystems": "home"}`, which some PBS sites require
on every job): `PsiJ.site_custom_attributes[executor]`, then
`ORBIT_MQ_PSIJ_{EXECUTOR}_CUSTOM_ATTRIBUTES` (a JSON object); the caller's attributes win.
"""

from __future__ import annotations

import contextlib
import copy
import inspect
import json
import os
import shutil
import sys
import threading
import time
import typing
from collections.abc import Callable, Mapping
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from orbit_mq.contracts.psij.errors import ExecutorUnavailable, InvalidJobSpec
from orbit_mq.contracts.psij.models import JobSpec
from orbit_mq.workers.logs import bounded_logger
from orbit_mq.workers.plugins.psij.scheduler import (
    SchedulerCalls,
    instrument,
    interval_for,
    set_interval,
)

if TYPE_CHECKING:
    import psij
    import psutil

log = bounded_logger("orbit_mq.plugin.psij")

LOCAL = "local"
ENV_PREFIX = "ORBIT_MQ_PSIJ_"
# psij's local attach reports exit code 0 for every attached process, so local jobs leave
# their program's exit status in a file: after an endpoint restart it is the only record of
# how the job ended. The endpoint's launcher writes it (launcher.py); jobs under another
# launcher run through this wrapper, which writes it to the file named by $0.
EXIT_WRAPPER = 'rc=0; "$@" || rc=$?; echo "$rc" > "$0"; exit "$rc"'
STAGE_JOB = "orbit_mq.workers.plugins.psij.stagejob"


def _flag(text: str) -> bool:
    return text.strip().lower() in ("1", "true", "yes", "on")


OPTION_TYPES: dict[str, Callable[[str], Any]] = {
    "queue_polling_interval": int,
    "initial_queue_polling_delay": int,
    "queue_polling_error_threshold": int,
    "keep_files": _flag,
    "work_directory": Path,
    "launcher_log_file": Path,
}


def env_name(executor: str, option: str) -> str:
    return f"{ENV_PREFIX}{executor.upper()}_{option.upper()}"


def env_options(executor: str) -> dict[str, Any]:
    """The options set for `executor` in the environment (unreadable values are skipped)."""
    options: dict[str, Any] = {}
    for option, convert in OPTION_TYPES.items():
        raw = os.environ.get(env_name(executor, option))
        if raw is None:
            continue
        try:
            options[option] = convert(raw)
        except ValueError:
            log.warning("ignoring %s=%r: not a valid value", env_name(executor, option), raw)
    return options


def site_custom_attributes(executor: str, configured: Mapping[str, Any]) -> dict[str, Any]:
    attributes = dict(configured)
    raw = os.environ.get(env_name(executor, "custom_attributes"))
    if raw:
        try:
            parsed = json.loads(raw)
        except ValueError:
            parsed = None
        if isinstance(parsed, dict):
            attributes.update(parsed)
        else:
            log.warning("ignoring %s: not a JSON object", env_name(executor, "custom_attributes"))
    return attributes


def installed_executors() -> list[str]:
    """PSI/J executors whose code loads here (flux and rp need extra packages)."""
    from psij import JobExecutor

    # psij keeps the load error of every registered executor; only its registry shows them.
    registry = getattr(JobExecutor, "_executors", None)
    if not isinstance(registry, dict):
        return sorted(JobExecutor.get_executor_names())
    return sorted(name for name, versions in registry.items() if versions and not versions[-1].exc)


def _config_class(executor: str) -> type[psij.JobExecutorConfig]:
    """The config class the executor's constructor takes (SlurmExecutorConfig, …)."""
    from psij import JobExecutor, JobExecutorConfig

    versions = getattr(JobExecutor, "_executors", {}).get(executor) or []
    executor_class: Any = versions[-1].ecls if versions else None
    try:
        hint = typing.get_type_hints(executor_class.__init__)["config"]
    except Exception:  # no hints to go by: the base class takes the common options
        return JobExecutorConfig
    for candidate in (hint, *typing.get_args(hint)):
        if isinstance(candidate, type) and issubclass(candidate, JobExecutorConfig):
            return candidate
    return JobExecutorConfig


class ExecutorPool:
    """One psij executor per name, made on first use. `get` blocks (a batch executor starts
    its queue-polling thread): call it in a worker thread."""

    def __init__(
        self,
        work_directory: Path,
        configured: Mapping[str, Any],
        queue_polling_interval: int,
    ) -> None:
        self.available = installed_executors()
        self._configured = dict(configured)
        self._defaults: dict[str, Any] = {
            "work_directory": work_directory,
            "queue_polling_interval": queue_polling_interval,
            "initial_queue_polling_delay": 1,
        }
        self._instances: dict[str, psij.JobExecutor] = {}
        self._lock = threading.Lock()
        self.calls = SchedulerCalls()
        self.intervals: dict[str, float] = {}  # batch executors' current polling intervals
        self._base_intervals: dict[str, float] = {}

    def check(self, executor: str) -> None:
        if executor not in self.available:
            raise ExecutorUnavailable(
                f"executor {executor!r} is not available on this endpoint; available: "
                f"{', '.join(self.available)}",
                {"executor": executor, "available": self.available},
            )

    def get(self, executor: str) -> psij.JobExecutor:
        from psij import JobExecutor

        self.check(executor)
        with self._lock:
            instance = self._instances.get(executor)
            if instance is None:
                try:
                    instance = JobExecutor.get_instance(executor, config=self.config(executor))
                except Exception as exc:
                    raise ExecutorUnavailable(
                        f"executor {executor!r} could not be started: {exc}",
                        {"executor": executor, "available": self.available},
                    ) from exc
                self._instances[executor] = instance
                instrument(instance, executor, self.calls)
                base = getattr(getattr(instance, "config", None), "queue_polling_interval", None)
                if base is not None and hasattr(instance, "_queue_poll_thread"):
                    self._base_intervals[executor] = self.intervals[executor] = float(base)
            return instance

    @property
    def adapting(self) -> bool:
        """Whether a started executor's polling interval is adapted (batch executors)."""
        return bool(self._base_intervals)

    def adapt(self, last_changes: dict[str, float], floor: float, ceiling: float) -> None:
        """Set each batch executor's polling interval from when its live jobs last changed
        (see scheduler.py)."""
        now = time.time()
        with self._lock:
            instances = dict(self._instances)
        for executor, base in self._base_intervals.items():
            wanted = interval_for(last_changes.get(executor), now, floor, base, ceiling)
            if wanted != self.intervals.get(executor):
                set_interval(instances[executor], wanted)
                self.intervals[executor] = wanted

    def close(self) -> None:
        """Stop the batch executors' queue polling. psij has no call for it, and a poller left
        running after its plugin stopped (an endpoint stopped in a process that goes on) would
        read and delete the exit-code files of jobs the next start must re-attach."""
        with self._lock:
            instances, self._instances = list(self._instances.values()), {}
        for instance in instances:
            poller = getattr(instance, "_queue_poll_thread", None)
            if poller is None:
                continue
            poller.done = True
            with poller._jobs_lock:
                poller._jobs.clear()

    def config(self, executor: str) -> psij.JobExecutorConfig:
        from psij import JobExecutorConfig

        configured = self._configured.get(executor)
        if isinstance(configured, JobExecutorConfig):
            return configured
        cls = _config_class(executor)
        accepted = set(inspect.signature(cls.__init__).parameters) - {"self"}
        chosen = {**(configured or {}), **env_options(executor)}
        for unknown in sorted(set(chosen) - accepted):
            log.warning("executor %s has no option %r; ignored", executor, unknown)
        options = {**self._defaults, **chosen}
        return cls(**{key: value for key, value in options.items() if key in accepted})


# -- specs -----------------------------------------------------------------------------------


def check_launcher(spec: JobSpec) -> None:
    from psij import Launcher

    from orbit_mq.workers.plugins.psij import launcher as local

    local.register()  # a spec may name it before any local job was made

    if spec.staged and spec.resources is not None and (spec.resources.process_count or 1) > 1:
        raise InvalidJobSpec(
            "spec: staging is done by the job's one process; with process_count > 1 every "
            "process would stage: stage in a job of one process, or in pre_launch",
            {"field": "spec.stage_in"},
        )
    if spec.launcher is not None and spec.launcher not in Launcher.get_launcher_names():
        names = sorted(Launcher.get_launcher_names())
        raise InvalidJobSpec(
            f"spec.launcher: unknown launcher {spec.launcher!r}; known: {', '.join(names)}",
            {"field": "spec.launcher", "launchers": names},
        )


def new_job(job_id: str | None = None) -> psij.Job:
    """An empty psij Job; its id becomes the endpoint's job id, so the job's files and its
    launcher's command line carry the same id (`job_id`: the id of a recorded job)."""
    import psij

    job = psij.Job()
    if job_id is not None:
        job._id = job_id  # psij has no public way to name a job
    return job


def psij_spec(
    spec: JobSpec,
    directory: Path,
    stdout: Path,
    stderr: Path,
    exit_file: Path | None,
    staging_plan: Path | None = None,
) -> psij.JobSpec:
    """The psij.JobSpec to submit; with `exit_file` (a local job), made to record the exit
    code there: by the endpoint's launcher (launcher.py) in place of PSI/J's single one, by a
    /bin/sh wrapper under any other launcher; with a `staging_plan`, run through stagejob.py,
    which stages around the program.

    psij checks the types of every constructor argument (typeguard: ≈ 0.2 ms a spec, on the
    event loop), so the parts jobs share are checked once, in a template per distinct set of
    them; each job gets a copy with its own program, paths and environment, which the
    contract's model has already typed."""
    executable, arguments = spec.executable, list(spec.arguments)
    if staging_plan is not None:
        executable = sys.executable
        arguments = ["-m", STAGE_JOB, str(staging_plan)]
    environment: dict[str, str | int] = dict(spec.environment)
    launcher = None
    if exit_file is not None:
        if spec.launcher in (None, "single"):
            from orbit_mq.workers.plugins.psij import launcher as local

            launcher = local.register()
            environment[local.EXIT_FILE_VARIABLE] = str(exit_file)
        else:
            arguments = ["-c", EXIT_WRAPPER, str(exit_file), executable, *arguments]
            executable = "/bin/sh"
    key = spec.model_dump_json(include=_SHARED_FIELDS)
    template = _TEMPLATES.get(key)
    if template is None:
        if len(_TEMPLATES) >= _MAX_TEMPLATES:
            _TEMPLATES.pop(next(iter(_TEMPLATES)))  # the oldest
        template = _TEMPLATES[key] = _template(spec)
    job_spec = copy.copy(template)
    job_spec.name = spec.name or spec.executable
    job_spec.executable = executable
    job_spec.arguments = arguments
    job_spec.directory = directory
    job_spec.environment = environment or None
    if launcher is not None:
        job_spec.launcher = launcher
    job_spec.stdout_path = stdout
    job_spec.stderr_path = stderr
    attributes = copy.copy(job_spec.attributes)  # executors may set custom attributes
    attributes.custom_attributes = dict(attributes.custom_attributes or {}) or None
    job_spec.attributes = attributes
    return job_spec


# What a template holds: the fields of the contract's JobSpec that psij.JobSpec takes apart
# from the program, its arguments, name, directory, environment and output paths.
_SHARED_FIELDS = {
    "inherit_environment",
    "stdin_path",
    "resources",
    "attributes",
    "pre_launch",
    "post_launch",
    "launcher",
}


_TEMPLATES: dict[str, psij.JobSpec] = {}  # by the JSON of the shared fields
_MAX_TEMPLATES = 256


def _template(spec: JobSpec) -> psij.JobSpec:
    """A psij.JobSpec with the shared fields of `spec`, checked by psij; InvalidJobSpec if
    psij refuses them."""
    import psij

    attributes = psij.JobAttributes(
        queue_name=spec.attributes.queue_name,
        account=spec.attributes.account,
        reservation_id=spec.attributes.reservation_id,
        custom_attributes=dict(spec.attributes.custom_attributes) or None,
    )
    if spec.attributes.duration is not None:
        attributes.duration = timedelta(seconds=spec.attributes.duration)
    resources = None
    if spec.resources is not None:
        resources = psij.ResourceSpecV1(**spec.resources.model_dump())
    try:
        return psij.JobSpec(
            inherit_environment=spec.inherit_environment,
            stdin_path=spec.stdin_path,
            resources=resources,
            attributes=attributes,
            pre_launch=spec.pre_launch,
            post_launch=spec.post_launch,
            launcher=spec.launcher,
        )
    except Exception as exc:  # psij checks types and constraints of its own
        raise InvalidJobSpec(f"spec: PSI/J refuses it: {exc}", {"field": "spec"}) from exc


def local_problem(spec: JobSpec, directory: Path) -> str | None:
    """Why the local executor could not start the job, or None (blocking: file checks).

    With a pre-launch script the program is not checked: it may change PATH or create it.
    """
    if not directory.is_dir():
        return f"directory {str(directory)!r} does not exist"
    if spec.pre_launch:
        return None
    name = spec.executable
    if "/" in name:
        path = Path(name) if os.path.isabs(name) else directory / name
        if path.is_file() and os.access(path, os.X_OK):
            return None
        return f"executable {name!r} not found or not executable"
    search = spec.environment.get("PATH")
    if search is None:
        search = os.environ.get("PATH", os.defpath) if spec.inherit_environment else os.defpath
    if shutil.which(name, path=search) is None:
        return f"executable {name!r} not found in PATH"
    return None


def describe(exc: BaseException) -> str:
    """A psij exception as one line (psij's exceptions keep their text in `message`)."""
    message = getattr(exc, "message", None) or str(exc) or type(exc).__name__
    cause = getattr(exc, "exception", None) or exc.__cause__
    return f"{message}: {cause}" if cause is not None else str(message)


def _job_process(native_id: str, job_id: str) -> psutil.Process | None:
    """The local job's launcher while it still runs: the pid exists, is not a zombie, and its
    command line carries the job id (so a recycled pid is not taken for the job)."""
    import psutil

    try:
        process = psutil.Process(int(native_id))
        if process.status() != psutil.STATUS_ZOMBIE and job_id in process.cmdline():
            return process
    except (ValueError, psutil.Error):
        pass
    return None


def local_process_running(native_id: str, job_id: str) -> bool:
    return _job_process(native_id, job_id) is not None


def terminate_local_process(native_id: str, job_id: str, grace: float = 5.0) -> None:
    """End a re-attached local job's process tree: SIGTERM (the staging wrapper then runs its
    on-cancel stage-outs), SIGKILL what is left after `grace` s. A process that is already
    gone is fine. psij's own cancel is not used for re-attached jobs: its reaper (0.9.11) then
    fails on every round once the process has gone, and stops noticing any local job's end."""
    import psutil

    root = _job_process(native_id, job_id)
    if root is None:
        return
    try:
        tree = [*root.children(recursive=True), root]
    except psutil.Error:
        return
    for process in tree:
        with contextlib.suppress(psutil.Error):
            process.terminate()
    _, alive = psutil.wait_procs(tree, timeout=grace)
    for process in alive:
        with contextlib.suppress(psutil.Error):
            process.kill()
