"""The `orbit-mq` command line, run as subprocesses against the real broker."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import StartEndpoint, cli_env, orbit_cli, wait_online

import orbit_mq
from orbit_mq.config import Settings

EndpointProcess = Callable[..., subprocess.Popen[str]]


@dataclass(frozen=True)
class Result:
    code: int | None
    stdout: str
    stderr: str

    def json(self) -> object:
        return json.loads(self.stdout)


async def run_cli(
    settings: Settings, *args: str, timeout: float = 30, env: dict[str, str] | None = None
) -> Result:
    """Run `orbit-mq ARGS` without blocking the event loop (in-process endpoints keep serving)."""
    process = await asyncio.create_subprocess_exec(
        *orbit_cli(*args),
        env={**cli_env(settings), **(env or {})},
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(process.communicate(), timeout)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise
    return Result(process.returncode, out.decode(), err.decode())


def assert_one_error_line(result: Result, code: int, *fragments: str) -> None:
    assert result.code == code, result
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    for fragment in fragments:
        assert fragment in lines[0]


# -- endpoint start, endpoints, call, sysinfo ------------------------------------------------


async def test_endpoint_process_is_listed_and_answers_calls(
    settings: Settings,
    name: str,
    fabric: orbit_mq.Fabric,
    endpoint_process: EndpointProcess,
) -> None:
    process = endpoint_process("--plugins", "sysinfo")
    await wait_online(fabric, name)

    listed, table, metrics, home, report = await asyncio.gather(
        run_cli(settings, "endpoints", "--json"),
        run_cli(settings, "endpoints"),
        run_cli(settings, "call", name, "sysinfo", "metrics"),
        run_cli(settings, "call", name, "sysinfo", "homedir", "--no-session"),
        run_cli(settings, "sysinfo", name, "--json"),
    )

    infos = {info["endpoint"]: info for info in listed.json()}  # type: ignore[attr-defined]
    assert infos[name]["pid"] == process.pid
    assert [(p["name"], p["version"]) for p in infos[name]["plugins"]] == [
        ("sysinfo", "1.0.0"),
        ("control", "1.0.0"),  # every endpoint serves it
    ]
    assert name in table.stdout and "sysinfo 1.0.0" in table.stdout
    values = metrics.json()
    assert isinstance(values, dict)
    assert values["cpu"]["logical"] >= 1 and values["memory"]["total"] > 0
    assert home.json() == str(Path.home())
    summary = report.json()
    assert isinstance(summary, dict)
    assert set(summary) == {"homedir", "host_role", "metrics"}


async def test_sigterm_stops_the_endpoint_and_says_offline(
    name: str, fabric: orbit_mq.Fabric, endpoint_process: EndpointProcess
) -> None:
    process = endpoint_process("--plugins", "sysinfo")
    await wait_online(fabric, name)
    offline = await fabric.presence(f"{name}.offline").start()

    process.send_signal(signal.SIGTERM)
    code = await asyncio.to_thread(process.wait, 20)

    assert code == 0
    async with asyncio.timeout(10):
        info = await anext(offline)
    assert (info.endpoint, info.status, info.pid) == (name, "offline", process.pid)
    assert process.stdout is not None and "stopped" in process.stdout.read()


async def test_call_passes_key_value_and_json_params(
    settings: Settings, name: str, start_endpoint: StartEndpoint
) -> None:
    await start_endpoint()
    calls = [
        ("echo", "text=hi", "times=3"),
        ("echo", 'text="3"'),  # quoted: stays a string
        ("echo", "--json-args", '{"text": "a", "times": 5}', "times=2"),
        ("add", 'point={"x": 1, "y": 2}', "dx=3"),
        ("remember", "value=kept"),  # needs the session `call` registers by default
    ]
    results = await asyncio.gather(
        *(run_cli(settings, "call", name, "echo", *call) for call in calls)
    )
    assert [r.json() for r in results] == [
        ["hi", "hi", "hi"],
        ["3"],
        ["a", "a"],
        {"x": 4, "y": 2},
        ["kept"],
    ], results


async def test_call_errors_are_one_line(
    settings: Settings, name: str, start_endpoint: StartEndpoint
) -> None:
    await start_endpoint()
    missing = f"nosuch{uuid.uuid4().hex[:8]}"
    no_endpoint, no_method, no_session, invalid = await asyncio.gather(
        run_cli(settings, "call", missing, "sysinfo", "metrics"),
        run_cli(settings, "call", name, "echo", "nope"),
        run_cli(settings, "call", name, "echo", "remember", "value=x", "--no-session"),
        run_cli(settings, "call", name, "echo", "echo", "times=many"),
    )
    assert_one_error_line(no_endpoint, 1, "not known", missing, name)
    assert_one_error_line(no_method, 1, "'nope'")
    assert_one_error_line(no_session, 1, "needs a session")
    assert_one_error_line(invalid, 1, "times")


@pytest.mark.parametrize(
    ("args", "env", "code", "fragments"),
    [
        (["endpoint", "start", "--name", "x", "--plugins", "nope"], {}, 2, ["nope", "sysinfo"]),
        (["call", "x", "echo", "echo", "notapair"], {}, 2, ["key=value"]),
        (["call", "x", "echo", "echo", "--json-args", "[1]"], {}, 2, ["JSON object"]),
        (["endpoints"], {"ORBIT_MQ_TIMEOUT": "-1"}, 2, ["timeout"]),
        (["--url", "amqp://guest:s3cret@127.0.0.1:1/", "endpoints"], {}, 1, ["cannot reach"]),
    ],
)
async def test_bad_input_and_config_fail_with_one_line(
    settings: Settings, args: list[str], env: dict[str, str], code: int, fragments: list[str]
) -> None:
    result = await run_cli(settings, *args, env=env)
    assert_one_error_line(result, code, *fragments)
    assert "s3cret" not in result.stderr


# -- watch -------------------------------------------------------------------------------------


async def start_watch(settings: Settings, *args: str) -> asyncio.subprocess.Process:
    """Start `orbit-mq watch ARGS` and return once its subscription is bound."""
    process = await asyncio.create_subprocess_exec(
        *orbit_cli("watch", *args),
        env=cli_env(settings),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert process.stderr is not None
    try:
        async with asyncio.timeout(15):
            line = await process.stderr.readline()
    except TimeoutError:
        process.kill()
        await process.wait()
        raise
    assert line.startswith(b"watching "), line
    return process


async def finish(process: asyncio.subprocess.Process, timeout: float = 30) -> Result:
    out, err = await asyncio.wait_for(process.communicate(), timeout)
    return Result(process.returncode, out.decode(), err.decode())


async def test_watch_prints_events_as_json_lines(
    settings: Settings, name: str, fabric: orbit_mq.Fabric, start_endpoint: StartEndpoint
) -> None:
    await start_endpoint()
    watch = await start_watch(settings, f"{name}.echo.tick", "--count", "3", "--timeout", "20")

    assert await fabric.call(name, "echo", "emit_many", {"count": 3}) == 3
    result = await finish(watch)

    assert result.code == 0, result
    events = [json.loads(line) for line in result.stdout.splitlines()]
    assert [(e["endpoint"], e["topic"], e["data"]["seq"]) for e in events] == [
        (name, "tick", 1),
        (name, "tick", 2),
        (name, "tick", 3),
    ]


async def test_watch_presence_sees_a_heartbeat(
    settings: Settings, name: str, start_endpoint: StartEndpoint
) -> None:
    await start_endpoint()
    result = await run_cli(
        settings, "watch", "--presence", f"{name}.#", "--count", "1", "--timeout", "20"
    )
    assert result.code == 0, result
    (line,) = result.stdout.splitlines()
    assert json.loads(line)["endpoint"] == name
    assert json.loads(line)["status"] == "heartbeat"


@pytest.mark.parametrize(("count", "code"), [(["--count", "1"], 1), ([], 0)])
async def test_watch_timeout_exit_code(
    settings: Settings, name: str, count: list[str], code: int
) -> None:
    result = await run_cli(settings, "watch", f"{name}.#", "--timeout", "0.3", *count)
    assert (result.code, result.stdout) == (code, "")


# -- schemas and demo --------------------------------------------------------------------------


async def test_schemas_writes_files(settings: Settings, tmp_path: Path) -> None:
    out = tmp_path / "schemas"
    result = await run_cli(settings, "schemas", "--out", str(out))
    assert result.code == 0, result
    written = [Path(line) for line in result.stdout.splitlines()]
    assert written and all(path.is_file() and out in path.parents for path in written)
    assert (out / "event.json").is_file()


async def test_demo_runs_to_completion(settings: Settings, name: str) -> None:
    result = await run_cli(settings, "demo", "--name", f"demo-{name}", timeout=90)
    assert result.code == 0, result
    assert "Demo complete" in result.stdout
    assert f"demo-{name}" in result.stdout


def test_schemas_default_dir_is_the_checkouts(tmp_path: Path) -> None:
    from orbit_mq.cli.main import default_schemas_dir

    (tmp_path / "orbit_mq").mkdir()
    (tmp_path / "orbit_mq" / "protocol.py").touch()
    (tmp_path / "schemas").mkdir()
    (tmp_path / "docs").mkdir()
    assert default_schemas_dir(tmp_path / "docs") == tmp_path / "schemas"
    elsewhere = tmp_path / "orbit_mq"
    (tmp_path / "schemas").rmdir()
    assert default_schemas_dir(elsewhere) == elsewhere / "schemas"
