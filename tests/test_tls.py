"""TLS: a broker node of the tests' own serves amqps:// with the lines of docker-compose's
rabbitmq.conf (docker/rabbitmq/tls.conf); an endpoint and a client meet over it with CA
verification and hostname checks, log in with a client certificate (EXTERNAL), and are
refused, with an error that says what to check, when the CA or the host name is wrong.

The certificates are made here, into a temporary directory. The server's names only
`localhost`: connecting to `127.0.0.1`, the same listener, is a hostname mismatch.
The unit tests at the top need no broker; none of them sends anything anywhere.
"""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import socket
import ssl
import subprocess
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from broker_node import BrokerNode, usable
from conftest import orbit_cli
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from echo_plugin import Echo

import orbit_mq
from orbit_mq.config import Settings
from orbit_mq.errors import ConfigError, TlsError
from orbit_mq.tls import check_transport, is_loopback, login_user, ssl_context
from orbit_mq.workers.endpoint import Endpoint
from orbit_mq.workers.plugins.sysinfo import SysInfo

REPO = Path(__file__).resolve().parent.parent
TLS_CONF = REPO / "docker" / "rabbitmq" / "tls.conf"
ENABLED_PLUGINS = REPO / "docker" / "rabbitmq" / "enabled_plugins"
EXTERNAL_PLUGIN = "rabbitmq_auth_mechanism_ssl"
CONTAINER_TLS_DIR = "/etc/rabbitmq/tls/"
SECRET = "pw-never-sent-7d1c"


# -- certificates ----------------------------------------------------------------------------


@dataclass
class Pki:
    dir: Path
    ca: Path
    other_ca: Path  # a CA that signed nothing the broker has
    client_cert: Path
    client_key: Path
    client_user: str


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _write_key(key: ec.EllipticCurvePrivateKey, path: Path) -> None:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    path.chmod(0o600)


def _certificate(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: tuple[x509.Name, ec.EllipticCurvePrivateKey] | None,
    extensions: list[tuple[x509.ExtensionType, bool]],
) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    issuer_name, signer = issuer or (name, key)
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=2))
    )
    for extension, critical in extensions:
        builder = builder.add_extension(extension, critical=critical)
    return builder.sign(signer, hashes.SHA256())


def _write_cert(certificate: x509.Certificate, path: Path) -> None:
    path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))


def _make_ca(subject: str, directory: Path, stem: str) -> tuple[x509.Name, Any]:
    key = _key()
    ca = _certificate(subject, key, None, [(x509.BasicConstraints(ca=True, path_length=0), True)])
    _write_cert(ca, directory / f"{stem}.pem")
    return ca.subject, key


def _leaf(
    subject: str, issuer: tuple[x509.Name, Any], usage: x509.ObjectIdentifier, names: list[Any]
) -> tuple[x509.Certificate, Any]:
    key = _key()
    extensions: list[tuple[x509.ExtensionType, bool]] = [
        (x509.BasicConstraints(ca=False, path_length=None), True),
        (x509.ExtendedKeyUsage([usage]), False),
    ]
    if names:
        extensions.append((x509.SubjectAlternativeName(names), False))
    return _certificate(subject, key, issuer, extensions), key


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    directory = tmp_path_factory.mktemp("pki")
    issuer = _make_ca("orbit-mq test CA", directory, "ca")
    _make_ca("orbit-mq other CA", directory, "other-ca")
    # localhost only: 127.0.0.1 reaches the same listener but is not in the certificate.
    server, server_key = _leaf(
        "localhost", issuer, ExtendedKeyUsageOID.SERVER_AUTH, [x509.DNSName("localhost")]
    )
    _write_cert(server, directory / "server.pem")
    _write_key(server_key, directory / "server.key")
    user = f"tls-{uuid.uuid4().hex[:8]}"
    client, client_key = _leaf(user, issuer, ExtendedKeyUsageOID.CLIENT_AUTH, [])
    _write_cert(client, directory / "client.pem")
    _write_key(client_key, directory / "client.key")
    return Pki(
        directory,
        directory / "ca.pem",
        directory / "other-ca.pem",
        directory / "client.pem",
        directory / "client.key",
        user,
    )


# -- no broker needed ------------------------------------------------------------------------


@pytest.fixture
def no_name_lookups(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail the test if anything resolves a name (a refusal must come before DNS)."""

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError(f"a name was resolved: {args[:2]}")

    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(asyncio.BaseEventLoop, "getaddrinfo", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


@pytest.mark.parametrize("host", ["broker.example.org", "10.1.2.3", "[2001:db8::7]"])
async def test_plain_amqp_to_another_host_is_refused_before_any_connection(
    host: str, tmp_path: Path, no_name_lookups: None
) -> None:
    url = f"amqp://alice:{SECRET}@{host}:5672/"
    shown = host.strip("[]")
    with pytest.raises(ConfigError) as refused:
        await orbit_mq.connect(url)
    message = str(refused.value)
    assert message == (
        f"refusing plain amqp:// to {shown}: use amqps:// (TLS), or pass --insecure / "
        "ORBIT_MQ_INSECURE=1 to send credentials in clear"
    )
    assert SECRET not in message and "\n" not in message
    endpoint = Endpoint("tlsrefused", [SysInfo], Settings(url=url, home=tmp_path))
    with pytest.raises(ConfigError, match="refusing plain amqp://"):
        await endpoint.start()


@pytest.mark.parametrize(
    "host", ["127.0.0.1", "127.5.6.7", "localhost", "LOCALHOST.", "[::1]", "x.localhost"]
)
def test_plain_amqp_to_loopback_is_allowed(host: str) -> None:
    check_transport(Settings(url=f"amqp://guest:guest@{host}:5672/"))


def test_insecure_allows_plain_amqp_and_is_read_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    url = "amqp://alice:pw@broker.example.org/"
    check_transport(Settings(url=url, insecure=True))
    monkeypatch.setenv("ORBIT_MQ_INSECURE", "1")
    assert Settings(url=url).insecure is True
    check_transport(Settings(url=url))


def test_is_loopback_never_trusts_a_dns_name() -> None:
    assert not is_loopback("localhost.example.org")
    assert not is_loopback("127.0.0.1.nip.io")
    assert not is_loopback("::ffff:10.0.0.1")
    assert is_loopback("127.255.255.254")


def test_client_certificates_need_amqps(pki: Pki) -> None:
    plain = "amqp://127.0.0.1:5672/"
    with pytest.raises(ConfigError, match="needs TLS: use an amqps:// URL"):
        check_transport(Settings(url=plain, cert_file=pki.client_cert))
    with pytest.raises(ConfigError, match="needs TLS"):
        check_transport(Settings(url=plain, auth="external"))


def test_the_ssl_context_verifies_and_checks_host_names(pki: Pki) -> None:
    context = ssl_context(Settings(url="amqps://localhost/", ca_file=pki.ca))
    assert context is not None
    assert context.check_hostname and context.verify_mode == ssl.CERT_REQUIRED
    assert ssl_context(Settings(url="amqp://localhost/")) is None
    with pytest.raises(ConfigError, match="always verifies"):
        ssl_context(Settings(url="amqps://localhost/?no_verify_ssl=1"))
    with pytest.raises(ConfigError, match=r"cannot load the CA file .*check ca_file"):
        ssl_context(Settings(url="amqps://localhost/", ca_file=pki.dir / "missing.pem"))
    with pytest.raises(ConfigError, match="cannot load the client certificate"):
        ssl_context(Settings(url="amqps://localhost/", ca_file=pki.ca, cert_file=pki.ca))


def test_external_login_is_the_certificates_common_name(pki: Pki) -> None:
    settings = Settings(url="amqps://localhost/", auth="external", cert_file=pki.client_cert)
    assert login_user(settings) == pki.client_user
    assert login_user(settings.model_copy(update={"url": "amqps://named@localhost/"})) == "named"
    assert login_user(Settings(url="amqps://localhost/")) == "guest"


def test_the_cli_refuses_plain_amqp_in_one_line(tmp_path: Path) -> None:
    url = f"amqp://alice:{SECRET}@broker.example.org:5672/"
    done = subprocess.run(
        orbit_cli("--url", url, "endpoints"),
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": "/usr/bin:/bin", "ORBIT_MQ_CONFIG": str(tmp_path / "none.toml")},
    )
    assert done.returncode == 2, done.stderr
    assert done.stderr.splitlines() == [
        "error: refusing plain amqp:// to broker.example.org: use amqps:// (TLS), or pass "
        "--insecure / ORBIT_MQ_INSECURE=1 to send credentials in clear"
    ]
    assert SECRET not in done.stdout + done.stderr


def test_the_cli_passes_insecure_on(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from orbit_mq import broker
    from orbit_mq.cli.main import app

    seen: list[Settings] = []

    async def stub(settings: Settings, *args: Any, **kwargs: Any) -> Any:
        seen.append(settings)
        raise orbit_mq.BrokerUnavailable("stub broker")  # no traffic: the point is the flag

    monkeypatch.setattr(broker, "connect", stub)
    monkeypatch.setenv("ORBIT_MQ_CONFIG", str(tmp_path / "none.toml"))
    monkeypatch.delenv("ORBIT_MQ_INSECURE", raising=False)
    url = "amqp://alice:pw@broker.example.org/"
    result = CliRunner().invoke(app, ["--insecure", "--url", url, "endpoints"])
    assert result.exit_code == 1 and "stub broker" in result.output
    result = CliRunner().invoke(app, ["--url", url, "endpoints"])
    assert [settings.insecure for settings in seen] == [True, False]


# -- docker-compose's broker -----------------------------------------------------------------


def test_docker_compose_broker_serves_tls_from_the_dev_ca() -> None:
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    broker, endpoint = compose["services"]["rabbitmq"], compose["services"]["endpoint"]
    mounts = {volume.split(":")[1]: volume.split(":")[0] for volume in broker["volumes"]}
    assert mounts["/etc/rabbitmq/conf.d/20-tls.conf"] == "./docker/rabbitmq/tls.conf"
    assert mounts["/etc/rabbitmq/enabled_plugins"] == "./docker/rabbitmq/enabled_plugins"
    for name in ("ca.pem", "server.pem", "server.key"):
        assert mounts[CONTAINER_TLS_DIR + name] == f"./dev-tls/{name}"
    assert "127.0.0.1:5671:5671" in broker["ports"]
    assert all(port.startswith("127.0.0.1:") for port in broker["ports"])
    assert endpoint["environment"]["ORBIT_MQ_URL"].startswith("amqps://orbit:orbit@rabbitmq:5671/")
    assert endpoint["environment"]["ORBIT_MQ_CA_FILE"] == "/etc/orbit-mq/ca.pem"
    assert "./dev-tls/ca.pem:/etc/orbit-mq/ca.pem:ro" in endpoint["volumes"]
    assert EXTERNAL_PLUGIN in ENABLED_PLUGINS.read_text()
    ignored = (REPO / ".gitignore").read_text().split()
    assert "dev-tls/" in ignored and "dev-tls/" in (REPO / ".dockerignore").read_text().split()


def test_dev_ca_script_makes_a_server_certificate_for_the_compose_names(tmp_path: Path) -> None:
    target = tmp_path / "dev-tls"
    for args in ([], ["client", "alice"]):
        subprocess.run(
            ["bash", str(REPO / "scripts" / "dev-ca.sh"), *args],
            env={"PATH": "/usr/bin:/bin", "DEV_TLS_DIR": str(target)},
            check=True,
            capture_output=True,
            timeout=60,
        )
    server = x509.load_pem_x509_certificate((target / "server.pem").read_bytes())
    names = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert {"rabbitmq", "localhost"} <= set(names.get_values_for_type(x509.DNSName))
    assert ipaddress.ip_address("127.0.0.1") in names.get_values_for_type(x509.IPAddress)
    context = ssl.create_default_context(cafile=str(target / "ca.pem"))
    context.load_cert_chain(target / "client-alice.pem", target / "client-alice.key")
    assert (target / "ca.key").stat().st_mode & 0o077 == 0
    assert (target / "client-alice.key").stat().st_mode & 0o077 == 0
    client = Settings(url="amqps://h/", auth="external", cert_file=target / "client-alice.pem")
    assert login_user(client) == "alice"


# -- over TLS, on a node of our own ------------------------------------------------------------


def node_config(pki: Pki) -> list[str]:
    """docker/rabbitmq/tls.conf for this node: the certificates here, a port of its own on
    127.0.0.1 (the file's default listener takes 5671 on every interface)."""
    lines = []
    for line in TLS_CONF.read_text().splitlines():
        line = line.replace(CONTAINER_TLS_DIR, f"{pki.dir}/")
        if line.startswith("listeners.ssl.default"):
            line = "listeners.ssl.1 = 127.0.0.1:{ssl_port}"
        lines.append(line)
    return lines


@pytest.fixture(scope="module")
def tls_node(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrokerNode]:
    reason = usable()
    if reason is not None:
        pytest.skip(f"a broker node of the tests' own {reason}")
    # The file's other plugins (management, prometheus) would take the system node's ports.
    node = BrokerNode(
        tmp_path_factory.mktemp("tls-node"), config=node_config(pki), plugins=[EXTERNAL_PLUGIN]
    )
    node.start()
    try:
        # A user that has no password: only its client certificate can log it in.
        node.ctl("add_user", pki.client_user, SECRET)
        node.ctl("clear_password", pki.client_user)
        node.ctl("set_permissions", "-p", "/", pki.client_user, ".*", ".*", ".*")
        yield node
    finally:
        node.stop()


def tls_settings(node: BrokerNode, pki: Pki, tmp_path: Path, **changes: Any) -> Settings:
    fields: dict[str, Any] = {
        "url": f"amqps://guest:guest@localhost:{node.ssl_port}/",
        "ca_file": pki.ca,
        "home": tmp_path / "home",
        "heartbeat_interval": 0.5,
        "timeout": 10,
        "reconnect_interval": 0.2,
        **changes,
    }
    return Settings(**fields)


@pytest.fixture
async def tls_endpoint(
    tls_node: BrokerNode, pki: Pki, tmp_path: Path
) -> AsyncIterator[tuple[str, Settings]]:
    """An endpoint over amqps:// (as guest), serving guest and the certificate's user."""
    name = f"tls{uuid.uuid4().hex[:8]}"
    settings = tls_settings(tls_node, pki, tmp_path, allowed_users=["guest", pki.client_user])
    endpoint = Endpoint(name, [SysInfo, Echo], settings)
    await endpoint.start()
    try:
        yield name, settings
    finally:
        await endpoint.stop(grace=5)


async def test_endpoint_and_client_serve_a_call_over_tls(
    tls_endpoint: tuple[str, Settings],
) -> None:
    name, settings = tls_endpoint
    async with orbit_mq.Fabric(settings) as fabric:
        assert await fabric.call(name, "echo", "echo", {"text": "over tls"}) == ["over tls"]
        sysinfo = await fabric.endpoint(name).plugin("sysinfo", session=False)
        assert (await sysinfo.metrics()).cpu.logical > 0
        assert (await fabric.call(name, "echo", "whoami"))["user"] == "guest"


async def test_external_login_with_a_client_certificate(
    tls_endpoint: tuple[str, Settings], tls_node: BrokerNode, pki: Pki
) -> None:
    name, settings = tls_endpoint
    external = settings.model_copy(
        update={
            "url": f"amqps://localhost:{tls_node.ssl_port}/",
            "auth": "external",
            "cert_file": pki.client_cert,
            "key_file": pki.client_key,
        }
    )
    async with orbit_mq.Fabric(external) as fabric:
        assert fabric.user == pki.client_user
        who = await fabric.call(name, "echo", "whoami")
    assert who["user"] == pki.client_user  # the broker took the user from the certificate


async def test_the_certificates_user_cannot_log_in_with_plain(
    tls_node: BrokerNode, pki: Pki, tmp_path: Path
) -> None:
    """The user logged in above has no password: EXTERNAL, not PLAIN, let it in."""
    url = f"amqps://{pki.client_user}:{SECRET}@localhost:{tls_node.ssl_port}/"
    with pytest.raises(orbit_mq.AccessRefused, match="refused the login") as refused:
        await orbit_mq.Fabric(tls_settings(tls_node, pki, tmp_path, url=url)).open()
    assert SECRET not in str(refused.value)


@pytest.mark.parametrize("ca", ["other", "system"])
async def test_a_broker_certificate_from_an_untrusted_ca_is_refused(
    tls_node: BrokerNode, pki: Pki, tmp_path: Path, ca: str
) -> None:
    settings = tls_settings(
        tls_node, pki, tmp_path, ca_file=pki.other_ca if ca == "other" else None
    )
    with pytest.raises(TlsError) as refused:
        await orbit_mq.Fabric(settings).open()
    message = str(refused.value)
    assert "TLS verification failed" in message
    assert "not signed by a CA this client trusts; set ca_file / ORBIT_MQ_CA_FILE" in message
    assert "guest:guest" not in message and "\n" not in message
    assert not isinstance(refused.value, orbit_mq.TransientError)


async def test_a_host_name_not_in_the_certificate_is_refused(
    tls_node: BrokerNode, pki: Pki, tmp_path: Path
) -> None:
    url = f"amqps://guest:guest@127.0.0.1:{tls_node.ssl_port}/"  # same listener, not its name
    settings = tls_settings(tls_node, pki, tmp_path, url=url)
    with pytest.raises(TlsError, match=r"the broker's certificate is not for '127\.0\.0\.1'"):
        await orbit_mq.Fabric(settings).open()
    endpoint = Endpoint("tlsmismatch", [SysInfo], settings)
    with pytest.raises(TlsError, match="TLS verification failed"):
        await endpoint.start()


async def test_through_a_route_the_certificate_is_checked_against_the_urls_host(
    tls_node: BrokerNode, pki: Pki, tmp_path: Path
) -> None:
    """An SSH tunnel's local end is another address; TLS still verifies the URL's host."""
    from orbit_mq import broker

    settings = tls_settings(tls_node, pki, tmp_path, url="amqps://guest:guest@localhost:1/")
    connection = await broker.connect(settings, "routed", lambda: ("127.0.0.1", tls_node.ssl_port))
    await connection.close()
    untrusted = settings.model_copy(update={"ca_file": pki.other_ca})
    with pytest.raises(TlsError, match="not signed by a CA this client trusts"):
        await broker.connect(untrusted, "routed", lambda: ("127.0.0.1", tls_node.ssl_port))
