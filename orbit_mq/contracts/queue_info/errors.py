"""Domain errors of the queue_info plugin (the SDK raises them by name on the client side)."""

from __future__ import annotations

from orbit_mq.errors import InvalidRequest, NotFound, Unavailable


class QueueInfoUnavailable(Unavailable):
    """A scheduler command is missing, failed, hung or printed something unreadable."""


class SchedulerOutputError(QueueInfoUnavailable):
    """The scheduler printed something the parser cannot read."""


class InvalidHostlist(SchedulerOutputError):
    """A Slurm hostlist expression that cannot be expanded."""


class AccountingUnavailable(QueueInfoUnavailable):
    """The batch system keeps no accounting database to list allocations from."""


class QueueNotFound(NotFound):
    """No partition/queue of that name."""


class UnknownUser(InvalidRequest):
    """The user name is malformed or unknown to the batch system."""


class CommandFailed(QueueInfoUnavailable):
    """A scheduler command exited with an error (details: command, returncode, stderr)."""

    @classmethod
    def of(cls, command: str, returncode: int, stderr: str) -> CommandFailed:
        detail = stderr.strip().splitlines()[-1] if stderr.strip() else "no message"
        return cls(
            f"{command} failed (exit {returncode}): {detail}; check that the batch system "
            "answers on this host",
            {"command": command, "returncode": returncode, "stderr": stderr},
        )

    @property
    def stderr(self) -> str:
        return str(self.details.get("stderr", ""))
