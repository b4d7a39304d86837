"""The broker bench/scale.py measures: a node of its own (tests/broker_node.py, open-file limit
raised) or one already running (`--url`; its figures through the local rabbitmqctl, if any)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from broker_node import BrokerNode, usable

CTL_TIMEOUT = 120  # s for one rabbitmqctl run (listing 1,000 connections takes a few)
CONNECTION_ITEMS = ("client_properties", "recv_oct")


class Broker(Protocol):
    url: str

    def status(self) -> dict[str, Any]: ...
    def connections(self) -> list[dict[str, Any]]: ...
    def pid(self) -> int | None: ...
    def describe(self) -> str: ...
    def close(self) -> None: ...


def _json(text: str) -> Any:
    return json.loads(text) if text.strip() else []


class OwnBroker:
    """A RabbitMQ node booted for the benchmark, stopped by `close`."""

    def __init__(self, directory: Path, nofile: int) -> None:
        why = usable()
        if why is not None:
            raise SystemExit(f"cannot start a node of its own ({why}); use --url")
        self.node = BrokerNode(directory / "node", nofile=nofile)
        self.nofile = nofile
        self.url = self.node.start()
        self._pid: int | None = None

    def status(self) -> dict[str, Any]:
        status: dict[str, Any] = _json(self.node.ctl("status", "--formatter", "json"))
        self._pid = status.get("pid", self._pid)
        return status

    def connections(self) -> list[dict[str, Any]]:
        listing = self.node.ctl("list_connections", *CONNECTION_ITEMS, "--formatter", "json")
        found: list[dict[str, Any]] = _json(listing)
        return found

    def pid(self) -> int | None:
        if self._pid is None:
            self.status()
        return self._pid

    def describe(self) -> str:
        return f"own node {self.node.node} on 127.0.0.1:{self.node.port}, nofile {self.nofile}"

    def close(self) -> None:
        self.node.stop()


class ExternalBroker:
    """A broker already running; figures from `rabbitmqctl` when it runs on this host."""

    def __init__(self, url: str) -> None:
        self.url = url
        local = urlsplit(url).hostname in ("127.0.0.1", "localhost", "::1")
        self.ctl = shutil.which("rabbitmqctl") if local and os.geteuid() == 0 else None

    def _run(self, *args: str) -> Any:
        if self.ctl is None:
            return {}
        done = subprocess.run(
            [self.ctl, *args, "--formatter", "json"],
            capture_output=True,
            text=True,
            timeout=CTL_TIMEOUT,
        )
        return _json(done.stdout) if done.returncode == 0 else {}

    def status(self) -> dict[str, Any]:
        status: dict[str, Any] = self._run("status")
        return status

    def connections(self) -> list[dict[str, Any]]:
        return list(self._run("list_connections", *CONNECTION_ITEMS) or [])

    def pid(self) -> int | None:
        pid = self.status().get("pid")
        return int(pid) if pid else None

    def describe(self) -> str:
        figures = "rabbitmqctl" if self.ctl else "no local rabbitmqctl: broker figures empty"
        where = urlsplit(self.url)
        return f"existing broker {where.hostname}:{where.port} ({figures})"

    def close(self) -> None:
        pass
