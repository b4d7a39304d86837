"""Settings: keyword arguments (CLI flags) > environment (`ORBIT_MQ_*`) > config file > defaults.

The config file is `$ORBIT_MQ_CONFIG`, else `~/.config/orbit-mq/config.toml`; its keys are the
field names below (`url = "amqps://…"`, `timeout = 10`, …). A config file that holds a
password must not be readable by group or others (`check_config_file`). TLS and when a plain
`amqp://` URL is allowed: orbit_mq/tls.py.
"""

from __future__ import annotations

import os
import stat
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit, urlunsplit

from pydantic import AfterValidator, BeforeValidator, Field
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from orbit_mq.errors import ConfigError
from orbit_mq.protocol import check_name

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


def broker_urls(url: str) -> list[str]:
    """The one-host URLs of a URL that names several brokers of one cluster:
    `amqp://u:p@h1:5672,h2:5672,h3/vhost` is h1, h2 and h3 with the same user and vhost."""
    parts = urlsplit(url)
    login, at, hosts = parts.netloc.rpartition("@")
    names = [host.strip() for host in hosts.split(",")]
    if "" in names:
        raise ConfigError(f"broker URL {redact_url(url)} has an empty host between its commas")
    return [urlunsplit(parts._replace(netloc=f"{login}{at}{host}")) for host in names]


def _joined_urls(value: Any) -> Any:
    """A list of broker URLs (config file) as the one URL of several hosts; they must share
    scheme, user, vhost and options, as the nodes of one cluster do."""
    if not isinstance(value, list):
        return value
    urls = [str(item) for item in value]
    if not urls:
        raise ConfigError("url: the list of broker URLs is empty")
    first = urlsplit(urls[0])
    login, at, _ = first.netloc.rpartition("@")
    hosts = []
    for url in urls:
        parts = urlsplit(url)
        own_login, _, host = parts.netloc.rpartition("@")
        if (parts.scheme, own_login, parts.path, parts.query) != (
            first.scheme,
            login,
            first.path,
            first.query,
        ):
            raise ConfigError(
                f"url: {redact_url(url)} differs from {redact_url(urls[0])} in more than its "
                "host; the brokers of one list must share scheme, user, vhost and options"
            )
        hosts.append(host)
    return urlunsplit(first._replace(netloc=f"{login}{at}{','.join(hosts)}"))


# One URL, or (config file) a list of URLs of one cluster's nodes: stored as one URL.
BrokerUrl = Annotated[str, NoDecode, BeforeValidator(_joined_urls)]


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="ORBIT_MQ_", extra="ignore")

    url: BrokerUrl = Field(
        DEFAULT_URL,
        description="Broker URL (amqp:// or amqps://); several nodes of a cluster as "
        "amqp://u:p@h1:5672,h2:5672,h3/vhost, or a list of URLs in the config file.",
    )
    ca_file: Path | None = Field(
        None, description="CA bundle that signed the broker's certificate (amqps://)."
    )
    cert_file: Path | None = Field(
        None, description="Client certificate (PEM) presented to the broker (amqps://)."
    )
    key_file: Path | None = Field(
        None, description="Key of cert_file (PEM, unencrypted); default: inside cert_file."
    )
    auth: Literal["plain", "external"] = Field(
        "plain",
        description="Login mechanism: plain (the URL's user and password) or external (the "
        "client certificate's CN is the user; needs cert_file).",
    )
    insecure: bool = Field(
        False,
        description="Allow plain amqp:// to a host other than this one (credentials in clear).",
    )
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
    pool: Annotated[str | None, AfterValidator(lambda name: name and check_name("pool", name))] = (
        Field(
            None,
            description="Serve as a member of this endpoint pool too: calls to the pool's name "
            "go to any live member (the control plugin excepted).",
        )
    )
    admin_users: Names = Field(
        default_factory=list,
        description="Broker users who may act on every user's work on an endpoint and stop it "
        "remotely; empty means only its own user.",
    )
    legacy_events: bool = Field(
        False,
        description="Also publish every event under its protocol 1 routing key (no owner word) "
        "for clients not yet on protocol 2; anyone who may bind to orbit.events then reads "
        "them, so use it only while such clients migrate (docs/protocol.md, Versioning).",
    )
    prefetch: int = Field(256, gt=0, description="Unacked requests per plugin queue.")
    ack_within: float = Field(
        10.0,
        gt=0,
        description="Longest an endpoint holds a request unacknowledged, s; keep it well below "
        "the broker's consumer_timeout (docs/reliability.md).",
    )
    queue_type: Literal["classic", "quorum"] = Field(
        "classic", description="Type of the request queues and durable subscription queues."
    )
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
        path = config_file()
        check_config_file(path)
        toml = TomlConfigSettingsSource(settings_cls, toml_file=path)
        return (init_settings, env_settings, toml)


def _holds_password(value: Any, key: str = "") -> bool:
    if isinstance(value, dict):
        return any(_holds_password(item, str(name)) for name, item in value.items())
    if isinstance(value, list):
        return any(_holds_password(item, key) for item in value)
    if not isinstance(value, str):
        return False
    if "password" in key.lower() or "secret" in key.lower():
        return bool(value)
    return "://" in value and urlsplit(value).password is not None


def check_config_file(path: Path) -> None:
    """Refuse a config file that holds a password (a URL with one, a `*password*` key) when
    its group or others may read it: on a shared login node that is everybody."""
    if os.name != "posix":
        return  # no mode bits to judge; Windows ACLs are the user's own business
    try:
        mode = path.stat().st_mode
        if not mode & 0o077:
            return
        with path.open("rb") as file:
            content = tomllib.load(file)
    except FileNotFoundError:
        return
    except (OSError, tomllib.TOMLDecodeError):
        return  # pydantic-settings reports what is wrong with it
    if _holds_password(content):
        raise ConfigError(
            f"config file {path} holds a password and others can read it "
            f"(mode {stat.S_IMODE(mode):o}); run `chmod 600 {path}`"
        )


def load_settings(**overrides: Any) -> Settings:
    """Settings with the given overrides; `None` values mean "not given" and are dropped."""
    return Settings(**{key: value for key, value in overrides.items() if value is not None})


def redact_url(url: str) -> str:
    """The URL with its password replaced, for messages and logs."""
    parts = urlsplit(url)
    login, at, hosts = parts.netloc.rpartition("@")
    if ":" not in login:
        return url
    user = login.split(":", 1)[0]
    return urlunsplit(parts._replace(netloc=f"{user}:***{at}{hosts}"))
