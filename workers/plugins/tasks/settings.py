"""Tasks settings: keyword arguments > `ORBIT_MQ_TASKS_*` environment > defaults.

ORBIT_MQ_TASKS_WORKERS=8                 # processes running Python function tasks
ORBIT_MQ_TASKS_ALLOW_PICKLE=false        # refuse pickled functions and arguments
ORBIT_MQ_TASKS_PICKLE_USERS=alice,bob    # … or accept them from these users only
"""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from orbit_mq.config import Names


class TasksSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="ORBIT_MQ_TASKS_", extra="ignore")

    workers: int = Field(
        default_factory=lambda: os.cpu_count() or 2,
        gt=0,
        description="Worker processes for Python function tasks (default: one per core).",
    )
    max_executables: int = Field(64, gt=0, description="Executable tasks running at once.")
    in_memory: int = Field(
        8192,
        gt=0,
        description="Tasks held in memory to run next; the rest wait in the journal.",
    )
    allow_pickle: bool = Field(
        True, description="Accept cloudpickled functions and arguments at all."
    )
    pickle_users: Names = Field(
        default_factory=list,
        description="Users whose pickles are accepted; empty means every user the endpoint "
        "serves (a pickle runs any code as the endpoint's user).",
    )
    directory: Path | None = Field(
        None,
        description="Where tasks without a working_directory run; the endpoint's tasks "
        "directory under ORBIT_MQ_HOME when unset.",
    )
    kill_grace: float = Field(
        2.0, gt=0, description="Seconds between SIGTERM and SIGKILL when a task is stopped."
    )

    def pickles_from(self, user: str) -> bool:
        return self.allow_pickle and (not self.pickle_users or user in self.pickle_users)
