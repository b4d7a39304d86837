"""Settings: keyword arguments (CLI flags) > environment (`ORBIT_MQ_*`) > config file > defaults.

The config file is `$ORBIT_MQ_CONFIG`, else `~/.config/orbit-mq/config.toml`; its keys are the
field names below (`url = "amqps://…"`, `timeout = 10`, …).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit, urlunsplit

from pydantic import BeforeValidator, Field
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

DEFAULT_URL = "amqp://guest:guest@127.0.0.1:5672/"
MiB = 1024 * 1024


def config_file() -> Path:
    explicit = os.environ.get("ORBIT_MQ_CONFIG")
    if explicit:
        return Path(explicit).expanduser()
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "orbit-mq" / "config.toml"


def _split_names(value: Any) -> Any:
    if isinstance(value, str):
        return [name.strip() for name in value.split(",") if name.strip()]
    return value


# A list of names, from the environment as "alice,bob" (settings of the endpoint and plugins).
Names = Annotated[list[str], NoDecode, BeforeValidator(_split_names)]


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="ORBIT_MQ_", extra="ignore")

    url: str = Field(DEFAULT_URL, description="Broker URL (amqp:// or amqps://).")
    ca_file: Path | None = Field(None, description="CA bundle for amqps:// connections.")
    timeout: float = Field(30.0, gt=0, description="Default call timeout in seconds.")
    heartbeat_interval: float = Field(5.0, gt=0, description="Endpoint presence interval, s.")
    max_message_size: int = Field(16 * MiB, gt=0, description="Largest request accepted, bytes.")
    home: Path = Field(
        Path.home() / ".local" / "share" / "orbit-mq",
        description="Where endpoints keep their state.",
    )
    allowed_users: Names = Field(
        default_factory=list,
        description="Broker users an endpoint serves; empty means only its own user.",
    )
    admin_users: Names = Field(
        default_factory=list,
        description="Broker users who may stop an endpoint remotely; empty means only its own "
        "user.",
    )
    prefetch: int = Field(256, gt=0, description="Unacked requests per plugin queue.")
    ack_within: float = Field(
        10.0,
        gt=0,
        description="Longest an endpoint holds a request unacknowledged, s; keep it well below "
        "the broker's consumer_timeout (docs/reliability.md).",
    )
    queue_type: Literal["classic", "quorum"] = Field("classic", description="Request queue type.")
    session_ttl: float = Field(3600.0, gt=0, description="Default session lifetime when idle, s.")
    discovery_window: float = Field(
        0.5, gt=0, description="How long `endpoints()` collects answers, s."
    )
    presence_cache: float = Field(
        0.25, ge=0, description="How long a client trusts a 'plugin queue is served' check, s."
    )
    reconnect_interval: float = Field(
        1.0, gt=0, description="Pause between reconnection attempts after the broker drops, s."
    )
    coalesce: bool = Field(True, description="Send concurrent calls to one plugin as one message.")

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        toml = TomlConfigSettingsSource(settings_cls, toml_file=config_file())
        return (init_settings, env_settings, toml)


def load_settings(**overrides: Any) -> Settings:
    """Settings with the given overrides; `None` values mean "not given" and are dropped."""
    return Settings(**{key: value for key, value in overrides.items() if value is not None})


def redact_url(url: str) -> str:
    """The URL with its password replaced, for messages and logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


def url_user(url: str) -> str:
    """The broker user a URL authenticates as (RabbitMQ's default is guest)."""
    from urllib.parse import unquote

    user = urlsplit(url).username
    return unquote(user) if user else "guest"
