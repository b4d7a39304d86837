"""The tasks contract's models: task specifications, states, the reports the methods return and
the events. Field names follow rhapsody-py's tasks (executable, arguments, function, args,
kwargs, uid, task_backend_specific_kwargs), so that its users' task dicts validate as they are.
"""

from __future__ import annotations

import secrets
from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import (
    AliasChoices,
    BaseModel,
    ConfigDict,
    Field,
    JsonValue,
    NonNegativeInt,
    PositiveInt,
    model_validator,
)

from orbit_mq.numbers import NotBool

# A uid the caller may choose: also used in file names and routing, so kept plain.
TASK_UID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$"
TaskUid = Annotated[str, Field(pattern=TASK_UID_PATTERN)]
PICKLE_PREFIX = "cloudpickle::"  # rhapsody-py's form of a pickled function in `function`
INLINE_RESULT = 16 * 1024  # bytes: larger results stay on the endpoint (get_result)
EVENT_TAIL = 1024  # bytes of stdout/stderr (and exception text) a TaskStatus carries
TASK_TAIL = 4096  # … and a Task


def new_uid() -> str:
    """A uid for a task submitted without one (random: unique among a user's tasks)."""
    return f"task.{secrets.token_hex(8)}"


def event_key(uid: str, seq: int) -> str:
    """The dedupe key of a task's transition (the message_id of its task_status event)."""
    return f"{uid}:{seq}"


class TaskState(StrEnum):
    """A task goes NEW → RUNNING → DONE | FAILED | CANCELED. A failed attempt of a task with
    `retries` left goes back to NEW; CANCELED may follow NEW directly."""

    NEW = "NEW"
    RUNNING = "RUNNING"
    DONE = "DONE"
    FAILED = "FAILED"
    CANCELED = "CANCELED"

    @property
    def final(self) -> bool:
        return self in TERMINAL


TERMINAL = frozenset({TaskState.DONE, TaskState.FAILED, TaskState.CANCELED})
Encoding = Literal["json", "pickle"]
TaskKind = Literal["executable", "function"]
Count = Annotated[PositiveInt, NotBool]
Seconds = Annotated[float, Field(gt=0), NotBool]


class TaskResources(BaseModel):
    """What one task needs; backends that place work (dask, radical_pilot, dragon) use it, the
    `concurrent` backend runs every task as one process."""

    model_config = ConfigDict(extra="forbid")

    ranks: Count = Field(default=1, description="Processes (MPI ranks).")
    cores_per_rank: Count = Field(default=1, description="CPU cores for each rank.")
    gpus_per_rank: Annotated[NonNegativeInt, NotBool] = Field(
        default=0, description="GPUs for each rank."
    )


class TaskSpec(BaseModel):
    """One task: an executable (`executable`, `arguments`) or a Python function (`function` as
    "module:name", or `pickled_function`) called with `args` and `kwargs`.

    Exactly one of executable, function and pickled_function is given. rhapsody-py's pickled
    form `"function": "cloudpickle::<base64>"` is accepted as a pickled_function.
    """

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    uid: TaskUid | None = Field(
        default=None,
        description="The caller's id for the task (unique among the caller's tasks on the "
        "endpoint); a task submitted again with a uid already known is not run again. "
        "The endpoint picks one when null.",
    )
    name: str | None = Field(default=None, max_length=256, description="A label.")
    executable: str | None = Field(default=None, min_length=1, description="Program to run.")
    arguments: list[str] = Field(default_factory=list, description="Its arguments (argv[1:]).")
    environment: dict[str, str] = Field(
        default_factory=dict, description="Variables added to the endpoint's environment."
    )
    working_directory: str | None = Field(
        default=None, description="Where it runs; the endpoint's task directory when null."
    )
    function: str | None = Field(
        default=None, min_length=3, description='A function by import path, "module:name".'
    )
    pickled_function: str | None = Field(
        default=None, min_length=1, description="A callable pickled with cloudpickle, base64."
    )
    args: list[JsonValue] = Field(default_factory=list, description="Positional arguments.")
    kwargs: dict[str, JsonValue] = Field(default_factory=dict, description="Keyword arguments.")
    pickled_arguments: str | None = Field(
        default=None,
        description="(args, kwargs) pickled with cloudpickle, base64, for values JSON cannot "
        "carry; replaces args and kwargs.",
    )
    timeout: Seconds | None = Field(
        default=None, description="Seconds one attempt may run before it is stopped (FAILED)."
    )
    retries: Annotated[int, Field(ge=0, le=100), NotBool] = Field(
        default=0,
        description="Attempts after a failed one (a non-zero exit, an exception, a timeout, "
        "the endpoint stopping while it ran).",
    )
    resources: TaskResources = Field(default_factory=TaskResources)
    backend: str | None = Field(
        default=None, description="Execution backend; the session's first when null."
    )
    backend_kwargs: dict[str, JsonValue] = Field(
        default_factory=dict,
        validation_alias=AliasChoices("backend_kwargs", "task_backend_specific_kwargs"),
        description="Passed to the backend as they are.",
    )

    @model_validator(mode="before")
    @classmethod
    def _pickled_in_function(cls, data: Any) -> Any:
        function = data.get("function") if isinstance(data, dict) else None
        if isinstance(function, str) and function.startswith(PICKLE_PREFIX):
            data = {**data, "function": None}
            data["pickled_function"] = function.removeprefix(PICKLE_PREFIX)
        return data

    @model_validator(mode="after")
    def _one_kind_of_work(self) -> TaskSpec:
        given = [f for f in ("executable", "function", "pickled_function") if getattr(self, f)]
        if len(given) != 1:
            raise ValueError(
                "a task needs exactly one of executable, function ('module:name') and "
                f"pickled_function; it has {', '.join(given) or 'none'}"
            )
        if self.function is not None and ":" not in self.function.strip(":"):
            raise ValueError(f"function {self.function!r} is not of the form 'module:name'")
        if self.executable is None and (self.arguments or self.environment):
            raise ValueError("arguments and environment are for executable tasks")
        if self.executable is not None and (self.args or self.kwargs or self.pickled_arguments):
            raise ValueError("args, kwargs and pickled_arguments are for function tasks")
        if self.pickled_arguments is not None and (self.args or self.kwargs):
            raise ValueError("pickled_arguments replaces args and kwargs: give one or the other")
        return self

    @property
    def kind(self) -> TaskKind:
        return "executable" if self.executable is not None else "function"

    @property
    def pickled(self) -> bool:
        return self.pickled_function is not None or self.pickled_arguments is not None


class TaskStatus(BaseModel):
    """Where a task stands: what `task_status` events, `task_status_batch` items, `wait_tasks`
    and `list_tasks` carry. Terminal ones carry the outcome: the exit code (executables) or
    the return value (functions; inline up to 16 KiB, else `result_kept`), the error, and the
    last 1 KiB of the exception text, stdout and stderr."""

    uid: str
    seq: int = Field(description="Per task 1, 2, 3 … without gaps (1 = NEW).")
    state: TaskState
    time: datetime = Field(description="When the task entered this state.")
    attempt: int = Field(default=1, description="Which attempt this state belongs to.")
    exit_code: int | None = None
    return_value: JsonValue = Field(
        default=None,
        description="The function's result: the value when result_encoding is json, a base64 "
        "cloudpickle when it is pickle; null when result_kept.",
    )
    result_encoding: Encoding | None = None
    result_kept: bool = Field(
        default=False, description="The result is too large to carry: fetch it (get_result)."
    )
    error: str | None = Field(default=None, description="Why it failed or was canceled.")
    exception: str | None = Field(default=None, description="The exception, with traceback.")
    stdout: str = ""
    stderr: str = ""

    def event_key(self) -> str:
        return event_key(self.uid, self.seq)


class Task(TaskStatus):
    """A task's full report (`get_task`, `cancel_task`): its status with the last 4 KiB of
    stdout, stderr and exception text, and where and when it ran."""

    name: str | None = None
    kind: TaskKind
    backend: str
    session: str | None = None
    submitted: datetime
    started: datetime | None = None
    finished: datetime | None = None
    retries: int = 0
    result_size: int | None = Field(default=None, description="The result's size in bytes.")


class TaskStatusBatch(BaseModel):
    """Many transitions in one `task_status_batch` event: every transition of every task is in
    one, in order per task (at most 1,024 items or about 1 MiB, and 50 ms after the first)."""

    tasks: list[TaskStatus]


class Submitted(BaseModel):
    """The reply of `submit_tasks`: every task's uid, in order, once all are journaled."""

    uids: list[str]
    duplicates: list[str] = Field(
        default_factory=list, description="Uids that were already known: not run again."
    )


class TaskList(BaseModel):
    tasks: list[TaskStatus]
    total: int = Field(description="Matching tasks in all.")
    counts: dict[TaskState, int] = Field(description="The caller's tasks by state.")


class ResultPart(BaseModel):
    """A piece of a task's result (`get_result`)."""

    uid: str
    encoding: Encoding
    total: int = Field(description="The encoded result's size in bytes.")
    offset: int
    data: str = Field(description="The bytes from offset, base64.")


class BackendInfo(BaseModel):
    name: str
    available: bool
    default: bool = False
    reason: str | None = Field(default=None, description="Why it is not available.")


class CancelSummary(BaseModel):
    canceled: int = Field(description="Tasks that were not yet ended and are now CANCELED.")
