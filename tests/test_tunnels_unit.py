"""Unit tests of the tunnel pieces that need no sshd: addresses, settings, rendezvous files,
the child's routes, job-node lookup, argument injection of submit_tunneled, and the broker's
routed transport (TLS keeps checking the URL's host name)."""

from __future__ import annotations

import asyncio
import datetime
import ssl
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import paramiko
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from pydantic import ValidationError
from yarl import URL

from orbit_mq.broker import _CorkedTransports
from orbit_mq.config import Settings
from orbit_mq.errors import ConfigError, InvalidRequest
from orbit_mq.workers.journal import Journal
from orbit_mq.workers.plugins.psij.tunneled import EndpointNameMissing, TunneledJobSpec, Tunnels
from orbit_mq.workers.tunnels import Address, TunnelError, TunnelSettings, nodes, rendezvous
from orbit_mq.workers.tunnels.arguments import endpoint_name
from orbit_mq.workers.tunnels.child import (
    TunnelOptions,
    broker_target,
    login_host,
    reverse_route,
    wait_for_port,
)
from orbit_mq.workers.tunnels.rendezvous import Rendezvous
from orbit_mq.workers.tunnels.settings import broker_address, parse_address
from orbit_mq.workers.tunnels.ssh import describe

# -- addresses and settings --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("login1", Address("login1", 22)),
        ("login1:2222", Address("login1", 2222)),
        ("[::1]:2200", Address("::1", 2200)),
        ("[fe80::1]", Address("fe80::1", 22)),
    ],
)
def test_parse_address(text: str, expected: Address) -> None:
    assert parse_address(text, 22) == expected


@pytest.mark.parametrize("text", ["host:0", "host:99999", "host:ssh", ":22", ""])
def test_parse_address_refuses_bad_values(text: str) -> None:
    with pytest.raises(ConfigError, match=r"HOST|port"):
        parse_address(text, 22)


def test_a_target_needs_a_port() -> None:
    with pytest.raises(ConfigError, match="HOST:PORT"):
        parse_address("broker", None)


def test_broker_address_defaults_by_scheme() -> None:
    assert broker_address("amqp://u:p@b.example:5673/") == Address("b.example", 5673)
    assert broker_address("amqps://b.example/") == Address("b.example", 5671)
    assert broker_address("amqp://b.example/vh") == Address("b.example", 5672)
    assert str(Address("::1", 5672)) == "[::1]:5672"


def test_settings_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ORBIT_MQ_TUNNEL_PORT", "2200")
    monkeypatch.setenv("ORBIT_MQ_TUNNEL_RETRY_WINDOW", "3")
    monkeypatch.setenv("ORBIT_MQ_TUNNEL_NODE", "c042")
    settings = TunnelSettings()
    assert (settings.port, settings.retry_window) == (2200, 3.0)
    assert settings.auto_add_host_keys is False  # unknown hosts are refused by default
    assert settings.ssh_address(settings.node or "") == Address("c042", 2200)
    assert settings.rendezvous_file(Path("/h"), "ep") == Path("/h/tunnels/ep.json")


def test_a_bad_target_setting_is_a_validation_error() -> None:
    with pytest.raises(ValidationError, match="HOST:PORT"):
        TunnelSettings(target="broker-without-port")


# -- rendezvous files --------------------------------------------------------------------------


def test_rendezvous_write_read_announce(tmp_path: Path) -> None:
    path = tmp_path / "dir" / "child.json"
    assert rendezvous.read(path) is None
    hello = Rendezvous(endpoint="child", mode="reverse", node="c042")
    assert rendezvous.announce(path, hello)
    assert not rendezvous.announce(path, hello.model_copy(update={"node": "other"}))
    assert rendezvous.read(path) == hello  # the first announcement stays
    rendezvous.write(path, hello.model_copy(update={"port": 40001}))
    info = rendezvous.read(path)
    assert info is not None and (info.port, info.node) == (40001, "c042")
    assert [p.name for p in path.parent.iterdir()] == ["child.json"]  # no temporary left
    path.write_text("{not json")
    assert rendezvous.read(path) is None
    rendezvous.remove(path)
    rendezvous.remove(path)  # idempotent
    assert not path.exists()


async def test_reverse_child_waits_for_its_port(tmp_path: Path) -> None:
    path = tmp_path / "child.json"
    with pytest.raises(TunnelError, match="no reverse tunnel port appeared"):
        await wait_for_port(path, 0.3)
    waiting = asyncio.create_task(wait_for_port(path, 10))
    rendezvous.write(path, Rendezvous(endpoint="child", mode="reverse", port=40002))
    assert await waiting == 40002


def test_reverse_route_follows_the_rendezvous_file(tmp_path: Path) -> None:
    path = tmp_path / "child.json"
    route = reverse_route(path, 40003)
    assert route() == ("127.0.0.1", 40003)  # no file: the last port known
    rendezvous.write(path, Rendezvous(endpoint="child", mode="reverse", port=40004))
    assert route() == ("127.0.0.1", 40004)
    path.unlink()
    assert route() == ("127.0.0.1", 40004)


# -- the child's options -----------------------------------------------------------------------


def test_login_host_from_option_setting_or_batch_system(monkeypatch: pytest.MonkeyPatch) -> None:
    for variable in ("PBS_O_HOST", "SLURM_SUBMIT_HOST", "LSB_SUB_HOST"):
        monkeypatch.delenv(variable, raising=False)
    settings = TunnelSettings(port=2200)
    with pytest.raises(ConfigError, match="--tunnel-via"):
        login_host(TunnelOptions("forward"), settings)
    monkeypatch.setenv("SLURM_SUBMIT_HOST", "login3")
    assert login_host(TunnelOptions("forward"), settings) == Address("login3", 2200)
    assert login_host(TunnelOptions("forward", via="l1:22"), settings) == Address("l1", 22)


def test_broker_target_defaults_to_the_url() -> None:
    url = "amqp://guest:guest@broker.orbit.invalid:5672/"
    assert broker_target(TunnelOptions(), TunnelSettings(), url) == Address(
        "broker.orbit.invalid", 5672
    )
    given = TunnelOptions(target="127.0.0.1:5673")
    assert broker_target(given, TunnelSettings(), url) == Address("127.0.0.1", 5673)


# -- job nodes ---------------------------------------------------------------------------------


def test_slurm_node_lists_are_expanded(monkeypatch: pytest.MonkeyPatch) -> None:
    answers = {"squeue": "c[041-042]\n", "scontrol": "c041\nc042\n"}
    monkeypatch.setattr(nodes, "_run", lambda *command: answers[command[0]])
    assert nodes.job_nodes("slurm", "17") == ["c041", "c042"]
    answers["squeue"] = "c007\n"
    assert nodes.job_nodes("slurm", "17") == ["c007"]
    assert nodes.job_nodes("local", "1234") == []


def test_pbs_exec_host_is_parsed(monkeypatch: pytest.MonkeyPatch) -> None:
    qstat = "Job Id: 5.pbs\n    exec_host = n1/0*2+n2/1\n        +n1/3\n    Hold_Types = n\n"
    monkeypatch.setattr(nodes, "_run", lambda *command: qstat)
    assert nodes.job_nodes("pbs", "5.pbs") == ["n1", "n2"]


def test_refused_connections_are_described_plainly() -> None:
    error = paramiko.ssh_exception.NoValidConnectionsError(
        {("127.0.0.1", 9): ConnectionRefusedError(111, "Connection refused")}
    )
    assert describe(error) == "cannot connect: Connection refused"


# -- submit_tunneled's arguments ---------------------------------------------------------------


def test_endpoint_name_forms() -> None:
    assert endpoint_name(["start", "-n", "a"]) == "a"
    assert endpoint_name(["--name=b"]) == "b"
    assert endpoint_name(["-nc"]) == "c"
    assert endpoint_name(["-n", "a", "--name", "d"]) == "d"
    assert endpoint_name(["--plugins", "sysinfo"]) is None
    assert endpoint_name(["-n"]) is None


@pytest.fixture
def tunnels(tmp_path: Path) -> Tunnels:
    settings = TunnelSettings(
        via="login1:2222", key_file=tmp_path / "key", retry_window=5, rendezvous_dir=tmp_path
    )
    plugin: Any = SimpleNamespace(
        home=tmp_path,
        context=SimpleNamespace(
            settings=Settings(url="amqp://g:g@10.1.2.3:5672/"), journal=Journal(None)
        ),
    )
    return Tunnels(plugin, settings)


def test_forward_arguments_are_added(tunnels: Tunnels, tmp_path: Path) -> None:
    spec = TunneledJobSpec(arguments=["-n", "kid", "--plugins", "sysinfo"])
    job, name, path = tunnels._prepare(spec, "forward")
    assert name == "kid" and path == tmp_path / "kid.json"
    assert job.executable == sys.executable
    assert job.arguments == [
        *("-P", "-m", "orbit_mq.cli", "endpoint", "start", "-n", "kid", "--plugins", "sysinfo"),
        *("--tunnel", "forward", "--rendezvous", str(path), "--tunnel-via", "login1:2222"),
        *("--tunnel-target", "10.1.2.3:5672"),
    ]
    # the SSH identity given to this endpoint goes to the child, unless its spec sets it
    assert job.environment["ORBIT_MQ_TUNNEL_KEY_FILE"] == str(tmp_path / "key")
    assert job.environment["ORBIT_MQ_TUNNEL_RETRY_WINDOW"] == "5.0"
    mine = TunneledJobSpec(
        executable="orbit-mq",
        arguments=["endpoint", "start", "--name=kid", "--tunnel-via", "l2"],
        environment={"ORBIT_MQ_TUNNEL_KEY_FILE": "/mine"},
    )
    job, _, _ = tunnels._prepare(mine, "forward")
    assert job.executable == "orbit-mq" and job.arguments.count("--tunnel-via") == 1
    assert job.environment["ORBIT_MQ_TUNNEL_KEY_FILE"] == "/mine"


def test_reverse_and_none_arguments(tunnels: Tunnels, tmp_path: Path) -> None:
    spec = TunneledJobSpec(arguments=["-n", "kid", "--rendezvous", str(tmp_path / "r.json")])
    job, _, path = tunnels._prepare(spec, "reverse")
    assert path == tmp_path / "r.json"
    assert job.arguments[-2:] == ["--tunnel", "reverse"] and job.environment == {}
    job, _, _ = tunnels._prepare(TunneledJobSpec(arguments=["-n", "kid"]), "none")
    assert job.arguments[-2:] == ["-n", "kid"]


@pytest.mark.parametrize(
    ("arguments", "error", "match"),
    [
        (["--plugins", "sysinfo"], EndpointNameMissing, "-n/--name"),
        (["-n", "bad name!"], InvalidRequest, "endpoint"),
        (["-n", "kid", "--tunnel", "forward"], InvalidRequest, "leave --tunnel out"),
    ],
)
def test_bad_arguments_are_refused(
    tunnels: Tunnels, arguments: list[str], error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=match):
        tunnels._prepare(TunneledJobSpec(arguments=arguments), "reverse")


async def test_the_node_of_a_reverse_tunnel(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    meeting, settings = tmp_path / "kid.json", TunnelSettings(retry_window=0)

    async def node(config: TunnelSettings = settings) -> Address | None:
        return await nodes.find_node(config, "slurm", "17", meeting, ended=lambda: False)

    monkeypatch.setattr(nodes, "job_nodes", lambda executor, native_id: ["c041", "c042"])
    assert await node() == Address("c041", 22)  # the batch system's first node
    monkeypatch.setattr(nodes, "job_nodes", lambda executor, native_id: [])
    monkeypatch.setattr(nodes, "NODE_WAIT_MIN", 0.3)
    with pytest.raises(TunnelError, match="ORBIT_MQ_TUNNEL_NODE"):
        await node()
    rendezvous.announce(meeting, Rendezvous(endpoint="kid", mode="reverse", node="c007"))
    assert await node() == Address("c007", 22)  # the child's announcement
    assert await node(TunnelSettings(node="gateway:2200")) == Address("gateway", 2200)
    ended = await nodes.find_node(settings, "local", None, tmp_path / "x", ended=lambda: True)
    assert ended is None


# -- the broker's routed transport -------------------------------------------------------------


def _certificate(tmp_path: Path, host: str) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(host)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_file, key_file


class _Provider:
    def __init__(self, context: ssl.SSLContext) -> None:
        self.context = context

    async def get_context(self) -> ssl.SSLContext:
        return self.context


async def test_routed_tls_checks_the_url_host(tmp_path: Path) -> None:
    cert, key = _certificate(tmp_path, "broker.orbit.invalid")
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_context.load_cert_chain(cert, key)

    async def greet(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"hello")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(greet, "127.0.0.1", 0, ssl=server_context)
    port = server.sockets[0].getsockname()[1]
    client_context = ssl.create_default_context(cafile=str(cert))
    routed = _CorkedTransports(lambda: ("127.0.0.1", port))
    async with server:
        reader, writer = await routed.create(
            URL("amqps://broker.orbit.invalid:5671/"),
            ssl_context_provider=_Provider(client_context),
        )
        assert await reader.read(5) == b"hello"  # the tunnel's address, the broker's name
        writer.close()
        # a TLS failure stays one (connect() says what to check), not a transient drop
        with pytest.raises(ssl.SSLCertVerificationError, match=r"other\.orbit\.invalid"):
            await routed.create(
                URL("amqps://other.orbit.invalid:5671/"),
                ssl_context_provider=_Provider(client_context),
            )
        plain = await routed.create(URL("amqp://broker.orbit.invalid:5672/"))
        plain[1].close()
