"""Passwords stay secret: a realistic run with users made by `orbit_mq.admin` (random
passwords) logs, prints and raises nothing that holds them; a config file with a password
is refused while others can read it.

The run is on the test broker, in a vhost of its own with uniquely named users, all deleted
afterwards: an endpoint starts, serves calls, loses its connection and reconnects; a client
calls it, reconnects too; a login with a wrong password fails; the CLI does the same in
subprocesses at --log-level debug. Every log record (DEBUG, every logger), every error
message, the subprocesses' output and command lines are searched for the passwords.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import subprocess
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from broker_users import scratch_vhost
from conftest import cli_env, orbit_cli, stop_process, wait_online
from echo_plugin import Echo
from yarl import URL

import orbit_mq
from orbit_mq import admin
from orbit_mq.broker_admin import Accounts
from orbit_mq.config import Settings
from orbit_mq.errors import ConfigError
from orbit_mq.permissions import Role
from orbit_mq.workers.endpoint import Endpoint
from orbit_mq.workers.plugins.sysinfo import SysInfo

pytestmark = pytest.mark.timeout(180)


# -- the config file -------------------------------------------------------------------------


@pytest.fixture
def config_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "config.toml"
    monkeypatch.setenv("ORBIT_MQ_CONFIG", str(path))
    monkeypatch.delenv("ORBIT_MQ_URL", raising=False)
    return path


@pytest.mark.skipif(os.name != "posix", reason="mode bits are POSIX")
@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660])
def test_a_config_file_with_a_password_that_others_read_is_refused(
    config_path: Path, mode: int
) -> None:
    config_path.write_text('url = "amqps://alice:s3cret-pw@broker.example.org:5671/"\n')
    config_path.chmod(mode)
    with pytest.raises(ConfigError) as refused:
        Settings()
    message = str(refused.value)
    assert f"run `chmod 600 {config_path}`" in message
    assert "s3cret-pw" not in message
    config_path.chmod(0o600)
    assert Settings().url == "amqps://alice:s3cret-pw@broker.example.org:5671/"


@pytest.mark.skipif(os.name != "posix", reason="mode bits are POSIX")
def test_a_config_file_without_a_password_may_be_readable(config_path: Path) -> None:
    config_path.write_text('url = "amqps://alice@broker.example.org:5671/"\ntimeout = 7\n')
    config_path.chmod(0o644)
    assert Settings().timeout == 7
    config_path.write_text('some_password = "x"\n')  # any key naming a password counts
    with pytest.raises(ConfigError, match="chmod 600"):
        Settings()


def test_the_cli_refuses_a_readable_config_file_in_one_line(config_path: Path) -> None:
    config_path.write_text('url = "amqp://alice:s3cret-pw@127.0.0.1:1/"\n')
    config_path.chmod(0o644)
    done = subprocess.run(
        orbit_cli("endpoints"),
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "ORBIT_MQ_CONFIG": str(config_path)},
    )
    assert done.returncode == 2
    assert done.stderr.splitlines() == [
        f"error: config file {config_path} holds a password and others can read it "
        f"(mode 644); run `chmod 600 {config_path}`"
    ]


# -- a run with real users -----------------------------------------------------------------------


@dataclass
class Run:
    accounts: Accounts
    admin_settings: Settings
    passwords: list[str] = field(default_factory=list)
    users: list[str] = field(default_factory=list)

    async def make(self, role: Role, name: str) -> admin.NewUser:
        made = await admin.add_user(self.accounts, self.admin_settings, role, name)
        self.users.append(made.name)
        self.passwords.append(made.password)
        return made

    def assert_secret(self, text: str, where: str) -> None:
        for password in self.passwords:
            assert password not in text, f"a password appeared in {where}"


@pytest.fixture
async def run(broker_url: str, tmp_path: Path) -> AsyncIterator[Run]:
    async with scratch_vhost(broker_url, "orbit-secrets") as vhost:
        settings = Settings(url=vhost.url, home=tmp_path / "admin", timeout=10)
        yield Run(vhost.accounts, settings, users=vhost.users)


def settings_of(made: admin.NewUser, tmp_path: Path, **changes: Any) -> Settings:
    fields: dict[str, Any] = {
        "url": made.url,
        "home": tmp_path / made.name,
        "heartbeat_interval": 0.5,
        "timeout": 10,
        "discovery_window": 0.3,
        "reconnect_interval": 0.2,
    }
    return Settings(**{**fields, **changes})


async def drop_connections(vhost: str) -> None:
    """Have the broker close every connection on `vhost` (only this test's)."""
    program = shutil.which("rabbitmqctl")
    if program is None:
        pytest.skip("needs rabbitmqctl to make the broker drop the test's connections")
    args = [program, "-q", "close_all_connections", "--vhost", vhost, "--limit", "100", "test"]
    done = await asyncio.to_thread(subprocess.run, args, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr


async def call_until_served(fabric: orbit_mq.Fabric, endpoint: str, attempts: int = 20) -> Any:
    """A call that may meet the connection while it comes back (bounded attempts; each
    waits for the connection itself)."""
    for attempt in range(attempts):
        try:
            return await fabric.call(endpoint, "echo", "echo", {"text": "again"}, timeout=5)
        except orbit_mq.TransientError:
            if attempt == attempts - 1:
                raise
    raise AssertionError("unreachable")


async def cli(env: dict[str, str], *args: str, expect: int = 0) -> str:
    """Run the CLI (in a thread: the in-process endpoint must keep serving); what it printed."""
    done = await asyncio.to_thread(
        subprocess.run, orbit_cli(*args), env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == expect, done.stderr[-2000:]
    return done.stdout + done.stderr


@pytest.mark.single_node  # makes broker users
async def test_no_password_in_logs_errors_or_command_lines(
    run: Run, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    ep_name, cli_ep_name = f"sec{uuid.uuid4().hex[:8]}", f"sec{uuid.uuid4().hex[:8]}"
    endpoint_user = await run.make(Role.ENDPOINT, ep_name)
    cli_endpoint_user = await run.make(Role.ENDPOINT, cli_ep_name)
    client = await run.make(Role.CLIENT, f"alice{uuid.uuid4().hex[:6]}")
    wrong = f"wrong-{uuid.uuid4().hex}"
    run.passwords.append(wrong)
    shown: list[str] = []  # error messages and CLI output

    served = settings_of(endpoint_user, tmp_path, allowed_users=[client.name])
    endpoint = Endpoint(ep_name, [SysInfo, Echo], served)
    await endpoint.start()
    process: subprocess.Popen[str] | None = None
    try:
        async with orbit_mq.Fabric(settings_of(client, tmp_path)) as fabric:
            assert await call_until_served(fabric, ep_name) == ["again"]
            vhost = URL(run.admin_settings.url).path.lstrip("/")
            await drop_connections(vhost)  # the endpoint's and the client's
            assert await call_until_served(fabric, ep_name) == ["again"]

            bad = str(URL(client.url).with_password(wrong))
            with pytest.raises(orbit_mq.AccessRefused) as refused:
                await orbit_mq.Fabric(settings_of(client, tmp_path, url=bad)).open()
            shown.append(str(refused.value))
            assert "***" in str(refused.value)  # the URL is shown, redacted

            env = cli_env(settings_of(client, tmp_path))
            endpoint_env = {
                **env,
                "ORBIT_MQ_URL": cli_endpoint_user.url,
                "ORBIT_MQ_ALLOWED_USERS": client.name,
                "ORBIT_MQ_HOME": str(tmp_path / "cli-endpoint"),
            }
            process = subprocess.Popen(  # noqa: ASYNC220 (started, not waited for)
                orbit_cli("endpoint", "start", "--name", cli_ep_name, "--plugins", "sysinfo"),
                env=endpoint_env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
            command_line = Path(f"/proc/{process.pid}/cmdline")  # what ps shows
            shown.append((await asyncio.to_thread(command_line.read_bytes)).decode())
            await wait_online(fabric, cli_ep_name)
            debug = ("--log-level", "debug")
            shown.append(await cli(env, *debug, "sysinfo", ep_name, "--json"))
            shown.append(await cli(env, *debug, "call", cli_ep_name, "sysinfo", "homedir"))
            wrong_env = {**env, "ORBIT_MQ_URL": bad}
            failed = await cli(wrong_env, *debug, "endpoints", expect=1)
            assert "refused the login" in failed
            shown.append(failed)
    finally:
        if process is not None:
            await asyncio.to_thread(stop_process, process)
            assert process.stdout is not None
            shown.append(process.stdout.read())
        await endpoint.stop(grace=5)

    assert f"endpoint {cli_ep_name!r} online" in shown[-1], shown[-1][-2000:]
    assert "lost its broker connection" in caplog.text  # the reconnect's warning was logged
    run.assert_secret(caplog.text, "the log")
    run.assert_secret("\n".join(shown), "an error message or the CLI's output")


def test_new_users_keep_their_password_out_of_repr() -> None:
    made = admin.NewUser("u", Role.CLIENT, "/", "pw-secret-x", "amqp://u:pw-secret-x@h/")
    assert "pw-secret-x" not in repr(made)
