"""Domain errors of the tasks plugin, each a subclass of a wire class of `orbit_mq.errors`, and
the SDK's errors for a task's result (TaskFailed, TaskCanceled)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from orbit_mq.errors import InvalidRequest, NotFound, OrbitError, Unauthorized, Unavailable

if TYPE_CHECKING:
    from orbit_mq.contracts.tasks.models import TaskStatus


class TaskNotFound(NotFound):
    """None of the caller's tasks has that uid on this endpoint."""


class InvalidTask(InvalidRequest):
    """A task is well-formed JSON but cannot be run (no work in it, an unknown backend, …)."""


class PickleRefused(Unauthorized):
    """The endpoint does not accept pickled functions or values (from this caller)."""


class BackendUnavailable(Unavailable):
    """The execution backend is unknown or not installed on this endpoint."""


class ResultNotAvailable(NotFound):
    """The task has no result (yet): it has not ended, or it ended without a value."""


class TaskFailed(OrbitError):
    """Raised by the SDK for a task's result when the task ended FAILED (not a wire error: the
    call that told it succeeded). `status` is the task's terminal status."""

    def __init__(self, status: TaskStatus) -> None:
        self.status = status
        detail = f": {status.error}" if status.error else ""
        super().__init__(f"task {status.uid} ended {status.state.value}{detail}")


class TaskCanceled(TaskFailed):
    """… when the task ended CANCELED."""
