"""Domain errors of the psij plugin; each subclasses a wire class of `orbit_mq.errors`."""

from __future__ import annotations

from orbit_mq.errors import Conflict, InvalidRequest, NotFound, Unauthorized, Unavailable


class JobNotFound(NotFound):
    """No job with that id on this endpoint."""


class NotJobOwner(Unauthorized):
    """The job (or the tunneled endpoint's job) belongs to another user, and the caller is
    not an admin of the endpoint."""


class JobNotEnded(Conflict):
    """The job has not ended: it cannot be removed (cancel it first)."""


class InvalidJobSpec(InvalidRequest):
    """The spec is well-formed but cannot be run (e.g. an unknown launcher)."""


class ExecutorUnavailable(Unavailable):
    """The executor is unknown or not installed on this endpoint."""


class EndpointNameMissing(InvalidRequest):
    """submit_tunneled was not given the child endpoint's name."""


class TunnelConflict(Conflict):
    """A tunneled child endpoint of that name is already being watched."""


class TunnelError(Unavailable):
    """An SSH tunnel could not be opened, or could not be kept up."""


class HostKeyRejected(TunnelError):
    """The SSH server's host key is unknown or differs from the one in known_hosts."""


class LoginRefused(TunnelError):
    """The SSH server refused the login (user, key)."""
