"""The execution backends a tasks session may name.

`concurrent` is the endpoint's own: executables as child processes and Python functions in a
pool of worker processes, on this host. rhapsody-py's `dask`, `radical_pilot` and `dragon`
backends are reported with what they need; this endpoint does not run tasks on them yet.
"""

from __future__ import annotations

import importlib.util

from orbit_mq.contracts.tasks import BackendInfo

DEFAULT_BACKEND = "concurrent"
# rhapsody-py's backends and the package each needs
RHAPSODY_BACKENDS = {"dask": "distributed", "radical_pilot": "radical.pilot", "dragon": "dragon"}


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a parent package missing
        return False


def backend_infos() -> list[BackendInfo]:
    infos = [BackendInfo(name=DEFAULT_BACKEND, available=True, default=True)]
    for name, module in RHAPSODY_BACKENDS.items():
        if not _installed("rhapsody") or not _installed(module):
            reason = f"needs rhapsody-py and {module.split('.')[0]} on the endpoint"
        else:
            reason = "installed, but this endpoint does not run tasks on it yet"
        infos.append(BackendInfo(name=name, available=False, reason=reason))
    return infos
