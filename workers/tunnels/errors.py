"""Errors of the SSH tunnels (the SDK raises them by name on the client side)."""

from __future__ import annotations

from orbit_mq.errors import Unavailable


class TunnelError(Unavailable):
    """An SSH tunnel could not be opened, or could not be kept up."""


class HostKeyRejected(TunnelError):
    """The SSH server's host key is unknown or differs from the one in known_hosts."""


class LoginRefused(TunnelError):
    """The SSH server refused the login (user, key)."""
