"""A RabbitMQ node of the tests' own, beside the system broker: its own node name, ports,
config, cookie and data under a temporary directory (after ../shared/infra/cluster/).

    node = BrokerNode(tmp_path, config=["consumer_timeout = 3000"])
    url = node.start()      # ≈ 5-10 s; the AMQP URL on 127.0.0.1
    ...
    node.stop()

Nodes of one cluster (tests/broker_cluster.py) share a `cookie`, and `join_cluster` makes
a node a member of another's cluster; `kill`, `freeze` and `thaw` signal the node's beam, and
`start` after `kill` boots it again on its data (it rejoins its cluster by itself).

A TLS listener: `config` lines may name `{ssl_port}` (a free port of its own), e.g.
`listeners.ssl.1 = 127.0.0.1:{ssl_port}` with the `ssl_options.*` lines; `plugins` are
enabled at boot (e.g. rabbitmq_auth_mechanism_ssl); `ctl(...)` runs rabbitmqctl against it.
`nofile` raises the node's open-file limit for many connections, e.g.
`BrokerNode(tmp_path, nofile=65536)` (capped at the hard limit where that cannot be raised, as
in a container without CAP_SYS_RESOURCE); by default it inherits this process's.

Needs root and the Debian package rabbitmq-server (its /usr/lib/rabbitmq/bin, not the
/usr/sbin wrappers that switch to the rabbitmq user and the system node's cookie).
"""

from __future__ import annotations

import contextlib
import os
import resource
import shutil
import signal
import socket
import subprocess
import time
import uuid
from pathlib import Path

from broker_control import answers_amqp

RMQ_BIN = Path("/usr/lib/rabbitmq/bin")
BOOT_TIMEOUT = 120.0


def usable() -> str | None:
    """Why a node cannot be started here, or None."""
    if os.geteuid() != 0:
        return "needs root"
    if not (RMQ_BIN / "rabbitmq-server").exists():
        return f"needs {RMQ_BIN}/rabbitmq-server (Debian package rabbitmq-server)"
    return None


def port_free(port: int) -> bool:
    """Whether nothing listens on 127.0.0.1:`port`."""
    with socket.socket() as sock:
        # as a listener binds: a port with connections of an earlier node in TIME_WAIT is free
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class BrokerNode:
    def __init__(
        self,
        directory: Path,
        config: list[str] | None = None,
        advanced: str = "[].",
        plugins: list[str] | None = None,
        nofile: int | None = None,
        cookie: str | None = None,
        port: int | None = None,
    ) -> None:
        self.dir = directory
        self.node = f"orbit-test-{uuid.uuid4().hex[:8]}@localhost"
        self.cookie = cookie  # None: Erlang makes one of the node's own at first boot
        # A given AMQP `port` takes its distribution port 20000 above (RabbitMQ's rule).
        self.port = port or _free_port()
        self.dist_port = port + 20000 if port else _free_port()
        self.ssl_port = _free_port()
        self.config = [line.replace("{ssl_port}", str(self.ssl_port)) for line in config or []]
        self.plugins = plugins or []
        self.advanced = advanced
        self.nofile = nofile
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}/"

    def _env(self) -> dict[str, str]:
        return {
            "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
            "HOME": str(self.dir / "home"),  # its own Erlang cookie
            "LANG": "C.UTF-8",
            "LC_ALL": "C.UTF-8",
            "RABBITMQ_NODENAME": self.node,
            "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_CONFIG_FILE": str(self.dir / "rabbitmq.conf"),
            "RABBITMQ_ADVANCED_CONFIG_FILE": str(self.dir / "advanced.config"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(self.dir / "enabled_plugins"),
            "RABBITMQ_CONF_ENV_FILE": str(self.dir / "rabbitmq-env.conf"),
            "RABBITMQ_MNESIA_BASE": str(self.dir / "mnesia"),
            "RABBITMQ_LOG_BASE": str(self.dir / "log"),
            "RABBITMQ_PID_FILE": str(self.dir / "beam.pid"),
            "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": "-kernel inet_dist_use_interface {127,0,0,1}",
            "ERL_CRASH_DUMP": str(self.dir / "log" / "erl_crash.dump"),
        }

    def _raise_nofile(self) -> None:
        """In the child before exec: the node's file-descriptor limit."""
        assert self.nofile is not None
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (self.nofile, self.nofile))
        except (ValueError, OSError):  # the hard limit stays where it is
            _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
            wanted = self.nofile if hard == resource.RLIM_INFINITY else min(self.nofile, hard)
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))

    def start(self) -> str:
        """Boot the node; returns its AMQP URL once it answers (at most BOOT_TIMEOUT s)."""
        for sub in ("home", "mnesia", "log"):
            (self.dir / sub).mkdir(parents=True, exist_ok=True)
        self._write_cookie()
        lines = [f"listeners.tcp.1 = 127.0.0.1:{self.port}", "log.console = false"]
        (self.dir / "rabbitmq.conf").write_text("\n".join([*lines, *self.config]) + "\n")
        (self.dir / "advanced.config").write_text(self.advanced + "\n")
        (self.dir / "enabled_plugins").write_text(f"[{','.join(self.plugins)}].\n")
        (self.dir / "rabbitmq-env.conf").write_text("# the environment says it all\n")
        log = (self.dir / "log" / "startup.log").open("ab")
        self.process = subprocess.Popen(
            [str(RMQ_BIN / "rabbitmq-server")],
            env=self._env(),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            preexec_fn=None if self.nofile is None else self._raise_nofile,
        )
        deadline = time.monotonic() + BOOT_TIMEOUT
        while not answers_amqp(self.port):
            if self.process.poll() is not None or time.monotonic() > deadline:
                tail = (self.dir / "log" / "startup.log").read_text(errors="replace")[-2000:]
                self.stop()
                raise RuntimeError(f"broker node {self.node} did not start:\n{tail}")
            time.sleep(0.2)  # polling a port while the node boots
        return self.url

    def _write_cookie(self) -> None:
        path = self.dir / "home" / ".erlang.cookie"
        if self.cookie is None or (path.exists() and path.read_text() == self.cookie):
            return
        path.unlink(missing_ok=True)
        path.write_text(self.cookie)
        path.chmod(0o400)  # Erlang refuses a cookie others may read

    def beam_pid(self) -> int | None:
        """The PID of the node's Erlang VM (its pid file), or None before it wrote one."""
        try:
            return int((self.dir / "beam.pid").read_text().strip())
        except (FileNotFoundError, ValueError):
            return None

    def _signal_beam(self, sig: signal.Signals) -> None:
        pid = self.beam_pid()
        if pid is None:
            raise RuntimeError(f"broker node {self.node} has no beam pid file")
        os.kill(pid, sig)

    def kill(self) -> None:
        """SIGKILL the node's VM, as a crash would; its data stays for `start`."""
        self._signal_beam(signal.SIGKILL)
        if self.process is not None:
            self.process.wait(timeout=30)  # the rabbitmq-server script ends with its VM
            self.process = None
        (self.dir / "beam.pid").unlink(missing_ok=True)

    def freeze(self) -> None:
        """SIGSTOP the VM: a hung node (its sockets stay open, nothing answers)."""
        self._signal_beam(signal.SIGSTOP)

    def thaw(self) -> None:
        self._signal_beam(signal.SIGCONT)

    def thaw_quietly(self) -> None:
        with contextlib.suppress(RuntimeError, ProcessLookupError):
            self.thaw()

    def join_cluster(self, seed: str) -> None:
        """Make this freshly booted node a member of `seed`'s cluster (same cookie needed)."""
        self.ctl("stop_app")
        self.ctl("join_cluster", seed)
        self.ctl("start_app")

    def ctl(self, *args: str, stdin: str | None = None, tool: str = "rabbitmqctl") -> str:
        """Run `rabbitmqctl ARGS` (or another CLI `tool`) against this node (≈ 1 s: one Erlang
        VM boot); its output."""
        done = subprocess.run(
            [str(RMQ_BIN / tool), "-n", self.node, *args],
            env=self._env(),
            input=stdin,
            capture_output=True,
            text=True,
            timeout=60,
        )
        if done.returncode != 0:
            raise RuntimeError(f"{tool} {' '.join(args)}: {done.stderr or done.stdout}")
        return done.stdout

    def stop(self) -> None:
        if self.process is None:
            return
        self.thaw_quietly()  # a frozen VM would not act on SIGTERM
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=10)
        self.process = None
        shutil.rmtree(self.dir / "mnesia", ignore_errors=True)
