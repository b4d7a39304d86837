"""What a caller sends cannot flood the endpoint's log: request values are shortened before
they reach a log line (with their full length), no line passes 1 KiB, and repeated refusals
from one caller are rate-limited."""

from __future__ import annotations

import logging
import re

import pytest
from conftest import StartEndpoint
from echo_plugin import Echo

import orbit_mq
from orbit_mq.config import MiB
from orbit_mq.workers.logs import LINE_LIMIT, Bounded, RefusalLog, bounded_logger
from orbit_mq.workers.plugins.staging import Staging
from orbit_mq.workers.plugins.sysinfo import SysInfo

BIG = "x" * (16 * MiB)
FORMAT = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")


async def test_a_16_mib_parameter_makes_no_log_line_over_1_kib(
    start_endpoint: StartEndpoint,
    settings: orbit_mq.Settings,
    name: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    large = {"max_message_size": 64 * MiB}
    await start_endpoint(plugins=[SysInfo, Echo, Staging], **large)
    async with orbit_mq.Fabric(settings.model_copy(update=large)) as fabric:
        refusals = [
            ("staging", "get_begin", {"path": BIG}),  # a path outside the roots
            ("staging", "stat", {"path": "/tmp/" + BIG}),  # a path too long for the OS
            ("echo", "echo", {"text": BIG, "times": "many"}),  # invalid parameters
            ("echo", "fail", {"kind": BIG}),  # a plugin failing with the value in its error
            ("echo", BIG[:200], {}),  # no such method
        ]
        for plugin, method, params in refusals:
            with pytest.raises(orbit_mq.RemoteError) as refused:
                await fabric.call(name, plugin, method, params, timeout=60)
            assert len(refused.value.message) < 2 * LINE_LIMIT  # the reply is bounded too
    lines = [line for record in caplog.records for line in FORMAT.format(record).splitlines()]
    noted = re.compile(r"… \(167772\d\d chars\)")  # shortened, with its full length
    assert any(noted.search(line) for line in lines)
    assert max(len(line) for line in lines) < 1024


def test_the_bounded_filter_shortens_any_record_on_a_handler() -> None:
    """The CLI's handler carries it: even a library's debug dump of a frame is cut."""
    record = logging.LogRecord("aiormq", logging.DEBUG, "x.py", 1, "frame %r", (BIG,), None)
    Bounded().filter(record)
    assert len(FORMAT.format(record)) < 1024 and "chars)" in record.getMessage()


def test_refusals_from_one_caller_are_rate_limited(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    caplog.set_level(logging.WARNING)
    now = [1000.0]
    monkeypatch.setattr("orbit_mq.workers.logs.time.monotonic", lambda: now[0])
    refusals = RefusalLog(bounded_logger("orbit_mq.test.refusals"), limit=3, period=60)
    for attempt in range(10):
        refusals.warning("mallory", "refused attempt %d", attempt)
    refusals.warning("alice", "refused alice")  # another caller has a window of her own
    assert [r.getMessage() for r in caplog.records] == [
        "refused attempt 0",
        "refused attempt 1",
        "refused attempt 2",
        "refused alice",
    ]
    now[0] += 61
    refusals.warning("mallory", "refused attempt %d", 10)
    assert [r.getMessage() for r in caplog.records[-2:]] == [
        "7 more refusals of requests from user 'mallory' were not logged",
        "refused attempt 10",
    ]
