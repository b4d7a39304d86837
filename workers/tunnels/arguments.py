"""The command line of a tunneled child endpoint (`orbit-mq endpoint start -n NAME …`)."""

from __future__ import annotations

import sys
from pathlib import Path

from orbit_mq.contracts.psij.models import TunnelMode
from orbit_mq.workers.tunnels.settings import Address, TunnelSettings

# Tunnel settings a forward-mode child inherits from its parent (unless its job sets them).
INHERITED = (
    "user",
    "key_file",
    "known_hosts",
    "auto_add_host_keys",
    "connect_timeout",
    "retry_window",
    "max_reconnects",
    "keepalive",
)


def default_command(arguments: list[str]) -> tuple[str, list[str]]:
    """This Python running `orbit-mq endpoint start` with `arguments`."""
    return sys.executable, ["-P", "-m", "orbit_mq.cli", "endpoint", "start", *arguments]


def endpoint_name(arguments: list[str]) -> str | None:
    """The value of the last -n/--name option in `arguments`."""
    name = None
    for i, arg in enumerate(arguments):
        if arg in ("-n", "--name") and i + 1 < len(arguments):
            name = arguments[i + 1]
        elif arg.startswith("--name="):
            name = arg.removeprefix("--name=")
        elif arg.startswith("-n") and len(arg) > 2 and not arg.startswith("--"):
            name = arg[2:]
    return name


def option_value(arguments: list[str], option: str) -> str | None:
    """The value of `option` (`--opt VALUE` or `--opt=VALUE`), or None."""
    for i, arg in enumerate(arguments):
        if arg == option and i + 1 < len(arguments):
            return arguments[i + 1]
        if arg.startswith(f"{option}="):
            return arg.removeprefix(f"{option}=")
    return None


def has_option(arguments: list[str], option: str) -> bool:
    return any(arg == option or arg.startswith(f"{option}=") for arg in arguments)


def tunnel_arguments(
    arguments: list[str], mode: TunnelMode, rendezvous: Path, via: Address, target: Address
) -> list[str]:
    """`arguments` with the options of `mode` added, where the caller did not give them."""
    added = list(arguments)
    if mode == "none":
        return added
    added += ["--tunnel", mode]
    if not has_option(arguments, "--rendezvous"):
        added += ["--rendezvous", str(rendezvous)]
    if mode == "forward":
        if not has_option(arguments, "--tunnel-via"):
            added += ["--tunnel-via", str(via)]
        if not has_option(arguments, "--tunnel-target"):
            added += ["--tunnel-target", str(target)]
    return added


def inherited_environment(settings: TunnelSettings, environment: dict[str, str]) -> dict[str, str]:
    """`environment` plus the parent's explicitly set SSH settings as ORBIT_MQ_TUNNEL_*."""
    merged = dict(environment)
    for key in INHERITED:
        value = getattr(settings, key)
        if key in settings.model_fields_set and value is not None:
            text = str(value).lower() if isinstance(value, bool) else str(value)
            merged.setdefault(f"ORBIT_MQ_TUNNEL_{key.upper()}", text)
    return merged
