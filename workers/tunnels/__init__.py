"""SSH tunnels (paramiko, no `ssh` program) for endpoints that cannot reach the broker directly.

* `ForwardTunnel`: a local port here → an SSH host (a login node) → the broker.
* `ReverseTunnel`: a port on an SSH host (a compute node) → here → the broker.
* `child.serve`: run an endpoint through either (`orbit-mq endpoint start --tunnel …`).
* `rendezvous`: the small files through which parent and child endpoints exchange ports.
* `TunnelSettings`: `ORBIT_MQ_TUNNEL_*` settings (user, key, known_hosts, timeouts, …).

Host keys are checked against known_hosts; unknown hosts are refused unless
`ORBIT_MQ_TUNNEL_AUTO_ADD_HOST_KEYS=true`. See docs/tunnels.md.
"""

from orbit_mq.contracts.psij.errors import HostKeyRejected, LoginRefused, TunnelError
from orbit_mq.workers.tunnels.settings import Address, TunnelSettings, parse_address
from orbit_mq.workers.tunnels.tunnel import ForwardTunnel, ReverseTunnel, Tunnel, TunnelState

__all__ = [
    "Address",
    "ForwardTunnel",
    "HostKeyRejected",
    "LoginRefused",
    "ReverseTunnel",
    "Tunnel",
    "TunnelError",
    "TunnelSettings",
    "TunnelState",
    "parse_address",
]
