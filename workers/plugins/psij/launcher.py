"""The launcher local jobs of one process run under: PSI/J's single launcher's contract at a
tenth of its cost.

PSI/J's single launcher (single_launch.sh with launcher_lib.sh) sends its log lines through a
process-substitution subshell that runs `date` for each of them: four lines and five
processes a job, even when the log goes to /dev/null. For a short job that is most of its
cost (≈ 14 ms of CPU per `/bin/true` here, against ≈ 1.3 ms with this launcher), and a
per-process meter misses it, since init reaps the orphaned subshells. This launcher keeps
the contract PSI/J's local executor relies on: the same arguments (job id, log file, pre-
and post-launch scripts, stdin, stdout, stderr, then the program and its arguments), the
pre- and post-launch scripts sourced around the program, `_PSI_J_LAUNCHER_DONE` printed on
success, the program's status as its own. It also leaves that status in the file named by
$ORBIT_MQ_EXIT_FILE, which the endpoint reads for jobs it re-attached after a restart (PSI/J
reports 0 for every attached process). It runs under /bin/sh; under bash when the job has a
pre- or post-launch script (which may be written for bash, as PSI/J's launcher is) or a log
file is configured (bash's printf stamps the lines without a process).

psij loads this module again from its file when it is registered (see `register`), so it
holds the launcher alone.
"""

from __future__ import annotations

import functools
import hashlib
import os
import threading
from pathlib import Path

from packaging.version import Version
from psij import Job, JobExecutorConfig, Launcher
from psij.descriptor import Descriptor

NAME = "orbit_mq_single"
DONE = "_PSI_J_LAUNCHER_DONE"
EXIT_FILE_VARIABLE = "ORBIT_MQ_EXIT_FILE"

SCRIPT = f"""\
# orbit_mq's launcher for one local process (module orbit_mq.workers.plugins.psij.launcher)
set -e
_PSI_J_JOB_ID=$1
_PSI_J_LOG_FILE=$2
_PSI_J_PRE_LAUNCH=$3
_PSI_J_POST_LAUNCH=$4
_PSI_J_STDIN=$5
_PSI_J_STDOUT=$6
_PSI_J_STDERR=$7
shift 7
log() {{
    if [ -n "$_PSI_J_LOG_FILE" ]; then
        TZ=UTC printf '%(%Y-%m-%d %H:%M:%S)T %s %s\\n' -1 "$_PSI_J_JOB_ID" "$*" \\
            >>"$_PSI_J_LOG_FILE"
    fi
}}
log "Launcher: $0"
if [ -n "$_PSI_J_PRE_LAUNCH" ]; then
    log "Running pre-launch: $_PSI_J_PRE_LAUNCH"
    . "$_PSI_J_PRE_LAUNCH"
fi
set +e
"$@" >"$_PSI_J_STDOUT" 2>"$_PSI_J_STDERR" <"$_PSI_J_STDIN"
_PSI_J_EC=$?
if [ -n "${{{EXIT_FILE_VARIABLE}:-}}" ]; then
    echo "$_PSI_J_EC" >"${EXIT_FILE_VARIABLE}"
fi
set -e
log "Command done: $_PSI_J_EC"
if [ -n "$_PSI_J_POST_LAUNCH" ]; then
    log "Running post-launch: $_PSI_J_POST_LAUNCH"
    . "$_PSI_J_POST_LAUNCH"
fi
echo {DONE}
exit "$_PSI_J_EC"
"""


def _text(value: object | None, default: str = "") -> str:
    return default if value is None else str(value)


class LocalLauncher(Launcher):
    """Runs a job's program as one process; the script is written once per work directory."""

    def __init__(self, config: JobExecutorConfig | None = None) -> None:
        super().__init__(config)
        config = self.config
        self._log_file = _text(config.launcher_log_file if config else None)
        directory = config.work_directory if config else JobExecutorConfig.DEFAULT_WORK_DIRECTORY
        self.script = _deployed(Path(directory))

    def get_launch_command(self, job: Job) -> list[str]:
        spec = job.spec
        assert spec is not None and spec.executable is not None
        bash = bool(spec.pre_launch or spec.post_launch or self._log_file)
        command = ["/bin/bash" if bash else "/bin/sh", str(self.script), job.id, self._log_file]
        command += [_text(spec.pre_launch), _text(spec.post_launch)]
        command += [_text(path, "/dev/null") for path in (spec.stdin_path, spec.stdout_path)]
        command += [_text(spec.stderr_path, "/dev/null"), spec.executable]
        return command + list(spec.arguments or [])

    def is_launcher_failure(self, output: str) -> bool:
        lines = output.split("\n")
        return len(lines) < 2 or lines[-2] != DONE

    def get_launcher_failure_message(self, output: str) -> str:
        return output  # the launcher failed before its last line: all of it is the failure


def _deployed(directory: Path) -> Path:
    """The script in `directory`, named by its content so that endpoints of different
    versions sharing a work directory never run each other's (written atomically, once)."""
    digest = hashlib.sha256(SCRIPT.encode()).hexdigest()[:16]
    path = directory / f"orbit_mq_launch-{digest}.sh"
    if not path.is_file():
        directory.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        partial.write_text(SCRIPT)
        partial.replace(path)
    return path


_registered = threading.Lock()


@functools.cache  # every job's spec asks: after the first, a lookup (the lock guards the first)
def register() -> str:
    """Makes the launcher known to psij as NAME, once (psij loads this file the first time)."""
    with _registered:
        if NAME not in Launcher.get_launcher_names():
            here = Path(__file__)
            cls = f"{here.stem}.{LocalLauncher.__name__}"
            Launcher.register_launcher(Descriptor(NAME, Version("1.0"), cls), str(here.parent))
    return NAME
