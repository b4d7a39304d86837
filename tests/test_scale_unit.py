"""bench/scale_figures.py: what the scale benchmark keeps of rabbitmqctl's output, and its
straight-line extrapolation. No broker."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))

from scale_figures import broker_status, extrapolate, fit_line, received_octets

MB = 2**20

STATUS = {
    "pid": 4242,
    "memory": {
        "total": {"erlang": 200 * MB, "rss": 150 * MB, "allocated": 180 * MB},
        "strategy": "rss",
        "connection_readers": 1 * MB,
        "connection_writers": 1 * MB,
        "connection_channels": 2 * MB,
        "connection_other": 4 * MB,
        "queue_procs": 3 * MB,
        "binary": 90 * MB,
        "code": 30 * MB,
    },
    "file_descriptors": {
        "sockets_limit": 17910,
        "sockets_used": 101,
        "total_limit": 19903,
        "total_used": 103,
    },
    "totals": {"virtual_host_count": 1, "connection_count": 101, "queue_count": 201},
    "processes": {"limit": 1048576, "used": 2186},
}


def test_broker_status_keeps_memory_descriptors_and_totals() -> None:
    figures = broker_status(STATUS)
    assert figures["rss_mb"] == 150.0
    assert figures["erlang_mb"] == 200.0
    assert figures["connections_mb"] == 8.0
    assert figures["queues_mb"] == 3.0
    assert (figures["connections"], figures["queues"]) == (101, 201)
    assert (figures["fds_used"], figures["sockets_limit"]) == (103, 17910)
    assert figures["erlang_processes"] == 2186
    assert list(figures["memory_top_mb"])[:2] == ["binary", "code"]


def test_broker_status_of_an_empty_answer_is_empty_not_an_error() -> None:
    figures = broker_status({})
    assert figures["rss_mb"] == 0.0
    assert figures["connections"] is None
    assert figures["memory_top_mb"] == {}


def test_memory_breakdown_entries_are_read_too() -> None:
    status = {"memory": {"queue_procs": {"bytes": 2 * MB, "percentage": 1.0}}}
    assert broker_status(status)["queues_mb"] == 2.0


def test_received_octets_counts_the_fleet_connections_only() -> None:
    connections = [
        {
            "client_properties": [["connection_name", "longstr", "orbit-mq endpoint s1-00000"]],
            "recv_oct": 100,
        },
        {"client_properties": {"connection_name": "orbit-mq endpoint s1-00001"}, "recv_oct": 50},
        {"client_properties": [["connection_name", "longstr", "orbit-mq client"]], "recv_oct": 7},
        {"client_properties": [], "recv_oct": 9},
    ]
    assert received_octets(connections, "s1-") == 150
    assert received_octets([], "s1-") == 0


def test_fit_line_through_points() -> None:
    intercept, slope = fit_line([(0, 140), (100, 150), (1000, 240)])
    assert slope == pytest.approx(0.1)
    assert intercept == pytest.approx(140)


def test_fit_line_of_one_point_goes_through_zero() -> None:
    assert fit_line([(100, 20)]) == (0.0, 0.2)
    with pytest.raises(ValueError):
        fit_line([])


def test_extrapolate_to_ten_thousand() -> None:
    projected = extrapolate([(100, 20.0), (500, 100.0), (1000, 200.0)], 10_000)
    assert projected == {"value": 2000.0, "per_endpoint": 0.2, "base": 0.0}
