"""Domain errors of the psij plugin (the SDK raises them by name on the client side)."""

from __future__ import annotations

from orbit_mq.errors import InvalidRequest, NotFound, Unavailable


class JobNotFound(NotFound):
    """No job with that id on this endpoint."""


class InvalidJobSpec(InvalidRequest):
    """The spec is well-formed but cannot be run (e.g. an unknown launcher)."""


class ExecutorUnavailable(Unavailable):
    """The executor is unknown or not installed on this endpoint."""
