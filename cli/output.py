"""Printing: JSON for programs, rich tables for people."""

from __future__ import annotations

import json
from typing import Any

from pydantic_core import to_jsonable_python
from rich.console import Console
from rich.table import Table

from orbit_mq.protocol import EndpointInfo

console = Console(highlight=False)
"""stdout, for results; errors and progress go to stderr."""


def print_json(value: Any) -> None:
    """`value` (pydantic models included) as indented JSON on stdout."""
    text = json.dumps(to_jsonable_python(value), indent=2, ensure_ascii=False)
    print(text, flush=True)


def human_bytes(size: float | None) -> str:
    if size is None:
        return "?"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(size) < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


def human_duration(seconds: float) -> str:
    """`93784` → `1d 2h`, `3725` → `1h 2m`, `75` → `1m 15s`, `4.2` → `4s`."""
    total = int(seconds)
    days, rest = divmod(total, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d {hours}h"
    if hours:
        return f"{hours}h {minutes}m"
    if minutes:
        return f"{minutes}m {secs}s"
    return f"{secs}s"


def percent(value: float | None) -> str:
    return "?" if value is None else f"{value:.0f}%"


def endpoints_table(infos: list[EndpointInfo]) -> Table:
    pools = sorted({info.pool for info in infos if info.pool})
    title = f"{len(infos)} endpoint(s) online" + (f"; pool(s): {', '.join(pools)}" if pools else "")
    table = Table(title=title, title_justify="left")
    columns = ("endpoint", *(("pool",) if pools else ()), "host", "role", "user", "plugins")
    for column in (*columns, "uptime", "pid"):
        table.add_column(column, justify="right" if column in ("uptime", "pid") else "left")
    # Members of one pool next to each other.
    for info in sorted(infos, key=lambda info: (info.pool or info.endpoint, info.endpoint)):
        table.add_row(
            f"{info.endpoint} (draining)" if info.draining else info.endpoint,
            *((info.pool or "",) if pools else ()),
            info.host,
            info.host_role.value,
            info.user,
            ", ".join(f"{plugin.name} {plugin.version}" for plugin in info.plugins),
            human_duration(info.uptime),
            str(info.pid),
        )
    return table
