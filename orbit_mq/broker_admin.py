"""Administering broker users: through RabbitMQ's management HTTP API, or `rabbitmqctl` on the
broker's own host when the API does not answer. The one seam where their errors become
`OrbitError`s (`raise … from`); what users get which rights is orbit_mq/permissions.py's.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import shutil
from typing import Any, Protocol
from urllib.parse import quote, unquote, urlsplit

import httpx
from yarl import URL

from orbit_mq.errors import AccessRefused, AdminUnavailable, BrokerError, ConfigError
from orbit_mq.permissions import BrokerUser, Rights, TopicRights
from orbit_mq.waiting import wait_within

MANAGEMENT_PORT = 15672
HTTP_TIMEOUT = 10.0  # s, one management API request
PROBE_TIMEOUT = 3.0  # s, the first request, which decides between the API and rabbitmqctl
MANAGEMENT_ERROR_KEYS = ("reason", "error")  # what the API's error bodies say, best first
RABBITMQCTL_TIMEOUT = 60.0  # s, one rabbitmqctl run (each boots an Erlang VM: ~0.5 s)


class Accounts(Protocol):
    """The broker operations `orbit-mq admin` needs."""

    where: str  # said in messages: which way the broker is administered

    async def users(self) -> list[BrokerUser]: ...
    async def add_user(self, name: str, password: str, tags: tuple[str, ...]) -> None: ...
    async def delete_user(self, name: str) -> None: ...
    async def rights(self, vhost: str) -> dict[str, Rights]: ...
    async def topic_rights(self, vhost: str) -> dict[str, dict[str, TopicRights]]: ...
    async def set_rights(self, vhost: str, user: str, rights: Rights) -> None: ...
    async def set_topic_rights(self, vhost: str, user: str, topic: TopicRights) -> None: ...
    async def add_vhost(self, vhost: str) -> None: ...
    async def delete_vhost(self, vhost: str) -> None: ...
    async def close(self) -> None: ...


def vhost_of(url: str) -> str:
    """The vhost an AMQP URL names (RabbitMQ's default, `/`, for an empty path)."""
    path = urlsplit(url).path
    return unquote(path[1:]) if len(path) > 1 else "/"


def is_local(url: str) -> bool:
    host = urlsplit(url).hostname or "localhost"
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def default_management_url(amqp_url: str) -> str:
    host = urlsplit(amqp_url).hostname or "localhost"
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{MANAGEMENT_PORT}"


def _tags(value: Any) -> tuple[str, ...]:
    """User tags: a list since RabbitMQ 3.9, a comma-separated string before."""
    if isinstance(value, str):
        return tuple(tag.strip() for tag in value.split(",") if tag.strip())
    return tuple(str(tag) for tag in value or ())


class ManagementApi:
    """The management HTTP API (the rabbitmq_management plugin)."""

    def __init__(self, base_url: str, user: str, password: str) -> None:
        self.base_url = base_url.rstrip("/")
        self.user = user
        self.where = f"the management API at {self.base_url}"
        self._http = httpx.AsyncClient(
            base_url=self.base_url + "/api/", auth=(user, password), timeout=HTTP_TIMEOUT
        )

    async def probe(self) -> None:
        """Raises httpx.TransportError when the API does not answer (the caller falls back)."""
        response = await self._http.get("whoami", timeout=PROBE_TIMEOUT)
        self._check(response, "GET whoami")

    async def _call(self, method: str, path: str, body: Any = None) -> Any:
        try:
            response = await self._http.request(method, path, json=body)
        except httpx.HTTPError as exc:
            raise BrokerError(f"{self.where}: {method} {path} failed: {exc}") from exc
        self._check(response, f"{method} {path}")
        return response.json() if response.content else None

    def _check(self, response: httpx.Response, what: str) -> None:
        if response.status_code in (401, 403):
            raise AccessRefused(
                f"{self.where} refused {self.user!r}: {_reason(response)}; pass "
                "--management-url http://ADMIN:PASSWORD@HOST:15672 with an administrator's "
                "credentials, or run on the broker host with --rabbitmqctl"
            )
        if response.is_error:
            raise BrokerError(f"{self.where}: {what}: {response.status_code} {_reason(response)}")

    async def users(self) -> list[BrokerUser]:
        listed = await self._call("GET", "users")
        return [BrokerUser(entry["name"], _tags(entry.get("tags"))) for entry in listed]

    async def add_user(self, name: str, password: str, tags: tuple[str, ...]) -> None:
        body = {"password": password, "tags": ",".join(tags)}
        await self._call("PUT", f"users/{_part(name)}", body)

    async def delete_user(self, name: str) -> None:
        await self._call("DELETE", f"users/{_part(name)}")

    async def rights(self, vhost: str) -> dict[str, Rights]:
        listed = await self._call("GET", f"vhosts/{_part(vhost)}/permissions")
        return {e["user"]: Rights(e["configure"], e["write"], e["read"]) for e in listed}

    async def topic_rights(self, vhost: str) -> dict[str, dict[str, TopicRights]]:
        listed = await self._call("GET", f"vhosts/{_part(vhost)}/topic-permissions")
        return _by_user(listed)

    async def set_rights(self, vhost: str, user: str, rights: Rights) -> None:
        body = {"configure": rights.configure, "write": rights.write, "read": rights.read}
        await self._call("PUT", f"permissions/{_part(vhost)}/{_part(user)}", body)

    async def set_topic_rights(self, vhost: str, user: str, topic: TopicRights) -> None:
        body = {"exchange": topic.exchange, "write": topic.write, "read": topic.read}
        await self._call("PUT", f"topic-permissions/{_part(vhost)}/{_part(user)}", body)

    async def add_vhost(self, vhost: str) -> None:
        await self._call("PUT", f"vhosts/{_part(vhost)}")

    async def delete_vhost(self, vhost: str) -> None:
        await self._call("DELETE", f"vhosts/{_part(vhost)}")

    async def close(self) -> None:
        await self._http.aclose()


def _part(name: str) -> str:
    """A name as one path segment (the default vhost `/` is `%2F`)."""
    return quote(name, safe="")


def _reason(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.reason_phrase
    said = [body.get(key) for key in MANAGEMENT_ERROR_KEYS] if isinstance(body, dict) else []
    return str(next(filter(None, said), response.reason_phrase))


def _by_user(listed: list[dict[str, str]]) -> dict[str, dict[str, TopicRights]]:
    found: dict[str, dict[str, TopicRights]] = {}
    for entry in listed:
        topic = TopicRights(entry["exchange"], entry["write"], entry["read"])
        found.setdefault(entry["user"], {})[topic.exchange] = topic
    return found


class Rabbitmqctl:
    """`rabbitmqctl` on the broker's host (it needs the node's Erlang cookie: run as root or
    as the rabbitmq user)."""

    where = "rabbitmqctl on this host"

    def __init__(self, program: str) -> None:
        self.program = program

    async def _run(self, *args: str, stdin: str | None = None) -> str:
        try:
            process = await asyncio.create_subprocess_exec(
                self.program,
                "-q",
                *args,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
        except OSError as exc:
            raise BrokerError(f"{self.where}: `rabbitmqctl {args[0]}` failed: {exc!r}") from exc
        given = stdin.encode() if stdin is not None else b""
        try:
            out, err = await wait_within(process.communicate(given), RABBITMQCTL_TIMEOUT)
        except TimeoutError as exc:
            process.kill()  # not left behind, holding the node's CLI
            await process.wait()
            raise BrokerError(
                f"{self.where}: `rabbitmqctl {args[0]}` gave no answer within "
                f"{RABBITMQCTL_TIMEOUT:.0f} s; is the node running (`rabbitmqctl status`)?"
            ) from exc
        if process.returncode != 0:
            lines = (err or out).decode(errors="replace").strip().splitlines()
            said = lines[-1] if lines else f"exit status {process.returncode}"
            raise BrokerError(f"{self.where}: `rabbitmqctl {args[0]}` failed: {said}")
        return out.decode()

    async def _json(self, *args: str) -> Any:
        text = await self._run(*args, "--formatter", "json")
        return json.loads(text) if text.strip() else []

    async def users(self) -> list[BrokerUser]:
        listed = await self._json("list_users")
        return [BrokerUser(entry["user"], _tags(entry.get("tags"))) for entry in listed]

    async def add_user(self, name: str, password: str, tags: tuple[str, ...]) -> None:
        # The password goes in on stdin: an argument would show in every process listing.
        await self._run("add_user", name, stdin=password)
        await self._run("set_user_tags", name, *tags)

    async def delete_user(self, name: str) -> None:
        await self._run("delete_user", name)

    async def rights(self, vhost: str) -> dict[str, Rights]:
        listed = await self._json("list_permissions", "-p", vhost)
        return {e["user"]: Rights(e["configure"], e["write"], e["read"]) for e in listed}

    async def topic_rights(self, vhost: str) -> dict[str, dict[str, TopicRights]]:
        return _by_user(await self._json("list_topic_permissions", "-p", vhost))

    async def set_rights(self, vhost: str, user: str, rights: Rights) -> None:
        await self._run(
            "set_permissions", "-p", vhost, user, rights.configure, rights.write, rights.read
        )

    async def set_topic_rights(self, vhost: str, user: str, topic: TopicRights) -> None:
        await self._run(
            "set_topic_permissions", "-p", vhost, user, topic.exchange, topic.write, topic.read
        )

    async def add_vhost(self, vhost: str) -> None:
        await self._run("add_vhost", vhost)

    async def delete_vhost(self, vhost: str) -> None:
        await self._run("delete_vhost", vhost)

    async def close(self) -> None:
        return None


async def open_accounts(
    amqp_url: str, management_url: str | None = None, use_rabbitmqctl: bool = False
) -> Accounts:
    """The management API (at `management_url`, default: the broker's host, port 15672, with
    the AMQP URL's credentials), else rabbitmqctl when the broker runs on this host."""
    program = shutil.which("rabbitmqctl")
    if use_rabbitmqctl:
        if program is None:
            raise AdminUnavailable("rabbitmqctl is not on PATH; run this on the broker host")
        return Rabbitmqctl(program)
    api = _management_api(amqp_url, management_url)
    try:
        await api.probe()
        return api
    except httpx.TransportError as exc:
        await api.close()
        if program is not None and is_local(amqp_url):
            return Rabbitmqctl(program)
        raise AdminUnavailable(
            f"{api.where} is not reachable ({exc or type(exc).__name__}) and rabbitmqctl cannot "
            "be used here (the broker is on another host, or rabbitmqctl is not on PATH); "
            "enable the API on the broker (rabbitmq-plugins enable rabbitmq_management), pass "
            "--management-url, or run on the broker host"
        ) from exc
    except BaseException:
        await api.close()
        raise


def _management_api(amqp_url: str, management_url: str | None) -> ManagementApi:
    given = URL(management_url or default_management_url(amqp_url))
    if given.scheme not in ("http", "https") or not given.host:
        raise ConfigError(f"--management-url must be http(s)://host:port, not {given.scheme}://")
    amqp = URL(amqp_url)
    user = given.user or amqp.user or "guest"
    password = given.password if given.user else (amqp.password or "guest")
    base = str(given.with_user(None).with_query(None).with_fragment(None))
    return ManagementApi(base, user, password or "")
