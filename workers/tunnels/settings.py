"""Tunnel settings (`ORBIT_MQ_TUNNEL_*` environment variables) and `HOST[:PORT]` addresses."""

from __future__ import annotations

import getpass
from pathlib import Path
from typing import NamedTuple
from urllib.parse import urlsplit

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from orbit_mq.config import broker_urls, redact_url
from orbit_mq.errors import ConfigError

AMQP_PORTS = {"amqp": 5672, "amqps": 5671}


class Address(NamedTuple):
    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def parse_address(text: str, default_port: int | None = None, what: str = "address") -> Address:
    """`HOST`, `HOST:PORT` or `[IPV6]:PORT` as an Address; without a port, `default_port`."""
    value = text.strip()
    host, port_text = value, ""
    if value.startswith("["):
        host, _, rest = value[1:].partition("]")
        port_text = rest[1:] if rest.startswith(":") else rest
    elif value.count(":") == 1:
        host, port_text = value.split(":")
    if port_text:
        if not port_text.isdigit() or not 0 < int(port_text) < 65536:
            raise ConfigError(f"{what} {text!r}: the port must be a number from 1 to 65535")
        port = int(port_text)
    elif default_port is not None:
        port = default_port
    else:
        raise ConfigError(f"{what} {text!r}: give it as HOST:PORT")
    if not host:
        raise ConfigError(f"{what} {text!r}: the host is missing; give it as HOST[:PORT]")
    return Address(host, port)


def broker_address(url: str) -> Address:
    """The broker's host and port named by an amqp:// or amqps:// URL."""
    nodes = broker_urls(url)
    if len(nodes) > 1:
        raise ConfigError(
            f"a tunnel carries one broker address, and {redact_url(url)} names {len(nodes)} "
            "nodes; name the node to reach (the tunnel target, or a URL of one host)"
        )
    parts = urlsplit(url)
    return Address(parts.hostname or "localhost", parts.port or AMQP_PORTS.get(parts.scheme, 5672))


def _checked(value: str | None, default_port: int | None) -> str | None:
    if value is not None:
        try:
            parse_address(value, default_port)
        except ConfigError as exc:  # pydantic reports ValueErrors as validation errors
            raise ValueError(str(exc)) from None
    return value


class TunnelSettings(BaseSettings):
    """How SSH tunnels connect; every field is also an `ORBIT_MQ_TUNNEL_{FIELD}` variable."""

    model_config = SettingsConfigDict(env_prefix="ORBIT_MQ_TUNNEL_", extra="ignore")

    user: str | None = Field(None, description="SSH user; the current user when unset.")
    port: int = Field(22, gt=0, lt=65536, description="SSH port of hosts given without one.")
    key_file: Path | None = Field(
        None, description="Private key to log in with; else ssh's usual keys and the agent."
    )
    known_hosts: Path | None = Field(
        None, description="known_hosts file with the servers' host keys; ~/.ssh/known_hosts."
    )
    auto_add_host_keys: bool = Field(
        False,
        description="Trust (and record) the host key of a server not in known_hosts. Off: "
        "such servers are refused.",
    )
    connect_timeout: float = Field(10.0, gt=0, description="One SSH connection attempt, s.")
    retry_window: float = Field(
        60.0, ge=0, description="How long logins are retried before the tunnel fails, s."
    )
    max_reconnects: int = Field(
        100, ge=0, description="Reconnections after dropped sessions before the tunnel fails."
    )
    keepalive: float = Field(15.0, ge=0, description="SSH keepalive interval, s (0: none).")
    rendezvous_dir: Path | None = Field(
        None,
        description="Where rendezvous files are kept (on a filesystem login and compute nodes "
        "share); `{home}/tunnels` when unset.",
    )
    rendezvous_wait: float = Field(
        300.0, gt=0, description="How long a reverse-mode child waits for its port, s."
    )
    target: str | None = Field(
        None,
        description="The broker as HOST:PORT seen from the far end of the tunnel (forward) or "
        "from the parent (reverse); the broker URL's host and port when unset.",
    )
    via: str | None = Field(
        None,
        description="HOST[:PORT] of the login node that forward-mode children tunnel through; "
        "this host's name when unset.",
    )
    node: str | None = Field(
        None,
        description="HOST[:PORT] the parent logs in to for reverse tunnels, instead of the "
        "job's node from the batch system or the child's rendezvous file.",
    )

    @field_validator("target")
    @classmethod
    def _check_target(cls, value: str | None) -> str | None:
        return _checked(value, None)

    @field_validator("via", "node")
    @classmethod
    def _check_host(cls, value: str | None) -> str | None:
        return _checked(value, 22)

    def login_user(self) -> str:
        return self.user or getpass.getuser()

    def rendezvous_file(self, home: Path, endpoint: str) -> Path:
        """The rendezvous file of the child endpoint `endpoint` (absolute)."""
        directory = self.rendezvous_dir or home / "tunnels"
        return (directory.expanduser() / f"{endpoint}.json").absolute()

    def ssh_address(self, text: str) -> Address:
        return parse_address(text, self.port, "SSH host")
