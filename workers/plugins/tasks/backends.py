"""The execution backends a tasks session may name.

`concurrent` is the endpoint's own: executables as child processes and Python functions in a
pool of worker processes, on this host. rhapsody-py's `dask`, `radical_pilot` and `dragon`
run tasks where rhapsody-py and the backend's package are installed on the endpoint
(orbit_mq/workers/plugins/tasks/remote.py).
"""

from __future__ import annotations

import functools

from orbit_mq.contracts.tasks import BackendInfo
from orbit_mq.workers.plugins.tasks.remote import RHAPSODY_BACKENDS, missing

DEFAULT_BACKEND = "concurrent"


@functools.cache  # what is installed does not change while the endpoint runs
def backend_infos() -> list[BackendInfo]:
    infos = [BackendInfo(name=DEFAULT_BACKEND, available=True, default=True)]
    for name in RHAPSODY_BACKENDS:
        reason = missing(name)
        infos.append(BackendInfo(name=name, available=reason is None, reason=reason))
    return infos
