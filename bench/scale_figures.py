"""Figures of bench/scale.py: what it keeps of `rabbitmqctl status` / `memory_breakdown`, and the
straight-line extrapolation of a figure measured at several endpoint counts."""

from __future__ import annotations

from typing import Any

MB = 2**20
CONNECTION_PARTS = ("connection_readers", "connection_writers", "connection_channels")


def broker_status(status: dict[str, Any]) -> dict[str, Any]:
    """The node's memory (MB), descriptors, connections and queues from
    `rabbitmqctl status --formatter json`."""
    memory = status.get("memory", {})
    total = memory.get("total", {})
    fds = status.get("file_descriptors", {})
    totals = status.get("totals", {})
    return {
        "rss_mb": round(total.get("rss", 0) / MB, 1),
        "erlang_mb": round(total.get("erlang", 0) / MB, 1),
        "connections_mb": round(sum(_bytes(memory.get(k)) for k in _connection_keys()) / MB, 1),
        "queues_mb": round(_bytes(memory.get("queue_procs")) / MB, 1),
        "connections": totals.get("connection_count"),
        "queues": totals.get("queue_count"),
        "fds_used": fds.get("total_used"),
        "fds_limit": fds.get("total_limit"),
        "sockets_used": fds.get("sockets_used"),
        "sockets_limit": fds.get("sockets_limit"),
        "erlang_processes": status.get("processes", {}).get("used"),
        "memory_top_mb": memory_top(memory),
    }


def memory_top(memory: dict[str, Any], parts: int = 6) -> dict[str, float]:
    """The largest parts of the node's memory breakdown, MB."""
    sizes = {k: _bytes(v) for k, v in memory.items() if k not in ("total", "strategy")}
    largest = sorted(sizes.items(), key=lambda kv: kv[1], reverse=True)[:parts]
    return {k: round(v / MB, 1) for k, v in largest}


def _connection_keys() -> tuple[str, ...]:
    return (*CONNECTION_PARTS, "connection_other")


def _bytes(entry: Any) -> int:
    """A memory entry of `status` (a number of bytes) or of `memory_breakdown` ({"bytes": n})."""
    if isinstance(entry, dict):
        return int(entry.get("bytes", 0))
    return int(entry or 0)


def received_octets(connections: list[dict[str, Any]], prefix: str) -> int:
    """Bytes the broker received on the connections named `orbit-mq endpoint {prefix}…`
    (`rabbitmqctl list_connections client_properties recv_oct --formatter json`)."""
    total = 0
    for connection in connections:
        properties = connection.get("client_properties") or []
        name = _connection_name(properties)
        if name.startswith(f"orbit-mq endpoint {prefix}"):
            total += int(connection.get("recv_oct") or 0)
    return total


def _connection_name(properties: Any) -> str:
    """`connection_name` of client properties, as rabbitmqctl gives them: a dict, or a list of
    [key, type, value] triples."""
    if isinstance(properties, dict):
        return str(properties.get("connection_name", ""))
    for entry in properties:
        if isinstance(entry, list) and len(entry) == 3 and entry[0] == "connection_name":
            return str(entry[2])
    return ""


def fit_line(points: list[tuple[float, float]]) -> tuple[float, float]:
    """Least-squares (intercept, slope) through (x, y) points; one point: a line through 0."""
    if not points:
        raise ValueError("no points to fit")
    if len(points) == 1 or len({x for x, _ in points}) == 1:
        x, y = points[0]
        return 0.0, y / x if x else 0.0
    n = len(points)
    mean_x = sum(x for x, _ in points) / n
    mean_y = sum(y for _, y in points) / n
    spread = sum((x - mean_x) ** 2 for x, _ in points)
    slope = sum((x - mean_x) * (y - mean_y) for x, y in points) / spread
    return mean_y - slope * mean_x, slope


def extrapolate(points: list[tuple[float, float]], at: float) -> dict[str, float]:
    """The fitted line's value at `at`, with its slope (per endpoint) and intercept."""
    intercept, slope = fit_line(points)
    return {
        "value": round(intercept + slope * at, 1),
        "per_endpoint": round(slope, 4),
        "base": round(intercept, 1),
    }
