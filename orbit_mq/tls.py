"""Transport security at the broker seam: when a plain `amqp://` URL is allowed, the one
`ssl.SSLContext` of an `amqps://` connection, the login mechanism, and what a failed TLS
handshake means for the user.

Credentials travel in the AMQP handshake, so a plain connection to another host sends them
in clear: orbit_mq refuses that unless told (`insecure`). Everything here is decided from
the settings alone, before any name is resolved or any socket opened.
"""

from __future__ import annotations

import ipaddress
import ssl
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

from yarl import URL

from orbit_mq.config import Settings, broker_urls, redact_url
from orbit_mq.errors import ConfigError, TlsError

SCHEMES = ("amqp", "amqps")
# aiormq reads these from the URL's query when it builds a context itself; orbit_mq always
# builds the context, so it takes them over (or refuses them) instead of silently dropping them.
URL_CA, URL_CERT, URL_KEY = "cafile", "certfile", "keyfile"
URL_NO_VERIFY = "no_verify_ssl"


def is_loopback(host: str) -> bool:
    """Whether `host` names this machine without asking DNS: localhost, 127.0.0.0/8, ::1."""
    name = host.strip("[]").rstrip(".").lower()
    if name == "localhost" or name.endswith(".localhost"):  # RFC 6761: never leaves the host
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False  # a DNS name: what it resolves to is not known, nor trusted


def check_transport(settings: Settings) -> None:
    """Refuse a URL that would send credentials in clear to another host, or TLS settings
    that a plain URL would ignore (ConfigError, before any connection attempt)."""
    parts = urlsplit(settings.url)
    if parts.scheme not in SCHEMES:
        raise ConfigError(
            f"broker URL {redact_url(settings.url)} must start with amqp:// or amqps://"
        )
    if parts.scheme == "amqps":
        return
    if settings.cert_file or settings.auth == "external":
        raise ConfigError(
            "a client certificate (cert_file, auth=external) needs TLS: use an amqps:// URL"
        )
    for url in broker_urls(settings.url):  # each node of a cluster on its own
        host = urlsplit(url).hostname or "localhost"
        if not is_loopback(host) and not settings.insecure:
            raise ConfigError(
                f"refusing plain amqp:// to {host}: use amqps:// (TLS), or pass --insecure / "
                "ORBIT_MQ_INSECURE=1 to send credentials in clear"
            )


def _query(url: str) -> dict[str, str]:
    return {key: values[-1] for key, values in parse_qs(urlsplit(url).query).items()}


def _tls_file(setting: Path | None, url_value: str | None) -> str | None:
    if setting is not None:
        return str(setting.expanduser())
    return url_value


def ssl_context(settings: Settings) -> ssl.SSLContext | None:
    """The context of an `amqps://` connection (None for `amqp://`): the broker's certificate
    is verified against `ca_file` (else the system's CAs) and must name the URL's host; with
    `cert_file` the client presents its own certificate."""
    if urlsplit(settings.url).scheme != "amqps":
        return None
    query = _query(settings.url)
    if query.get(URL_NO_VERIFY, "0") != "0":
        raise ConfigError(
            f"{URL_NO_VERIFY} in the broker URL: orbit_mq always verifies the broker's "
            "certificate; give the CA that signed it with ca_file / ORBIT_MQ_CA_FILE instead"
        )
    ca_file = _tls_file(settings.ca_file, query.get(URL_CA))
    cert_file = _tls_file(settings.cert_file, query.get(URL_CERT))
    key_file = _tls_file(settings.key_file, query.get(URL_KEY))
    try:
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=ca_file)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(
            f"cannot load the CA file {ca_file} ({_reason(exc)}); check ca_file / "
            "ORBIT_MQ_CA_FILE: a PEM bundle of the CA that signed the broker's certificate"
        ) from exc
    if cert_file:
        try:
            context.load_cert_chain(cert_file, key_file)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(
                f"cannot load the client certificate {cert_file} with key "
                f"{key_file or cert_file} ({_reason(exc)}); check cert_file and key_file "
                "(PEM; the key unencrypted)"
            ) from exc
    elif key_file:
        raise ConfigError("key_file is set but cert_file is not: give both, or neither")
    # create_default_context already requires a verified certificate for the host; say it
    # here too so that no later change can weaken it unnoticed.
    context.check_hostname = True
    context.verify_mode = ssl.CERT_REQUIRED
    return context


def connection_urls(settings: Settings) -> list[URL]:
    """The URLs handed to aiormq, one per broker node: with `auth=external` they ask for the
    EXTERNAL mechanism (the broker takes the user from the client certificate), which aiormq
    reads from the query."""
    urls = [URL(url) for url in broker_urls(settings.url)]
    if settings.auth == "external":
        return [url if "auth" in url.query else url.update_query(auth="external") for url in urls]
    return urls


def uses_external(settings: Settings) -> bool:
    return settings.auth == "external" or _query(settings.url).get("auth", "").lower() == (
        "external"
    )


def login_user(settings: Settings) -> str:
    """The broker user the connection authenticates as: with EXTERNAL the client
    certificate's common name (the broker's `ssl_cert_login_from = common_name`) unless the
    URL names it, else the URL's user (RabbitMQ's default is guest)."""
    user = urlsplit(settings.url).username
    if user:
        return unquote(user)
    if uses_external(settings):
        cert_file = _tls_file(settings.cert_file, _query(settings.url).get(URL_CERT))
        if cert_file:
            return certificate_common_name(Path(cert_file))
    return "guest"


def certificate_common_name(path: Path) -> str:
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    try:
        certificate = x509.load_pem_x509_certificate(path.read_bytes())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read the client certificate {path}: {_reason(exc)}") from exc
    names = certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if not names:
        raise ConfigError(
            f"the client certificate {path} has no common name (CN), which EXTERNAL login "
            "uses as the broker user; put the user in the URL (amqps://USER@host/)"
        )
    return str(names[0].value)


def _reason(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLError) and exc.reason:
        return str(exc.reason)
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__


def handshake_failed(
    exc: ssl.SSLError, settings: Settings, action: str, host: str | None = None
) -> TlsError:
    """What to check after the TLS handshake with the broker (node `host`) failed."""
    host = host or urlsplit(broker_urls(settings.url)[0]).hostname or "localhost"
    if isinstance(exc, ssl.SSLCertVerificationError):
        detail = exc.verify_message or _reason(exc)
        if "hostname" in detail.lower() or "ip address mismatch" in detail.lower():
            advice = (
                f"the broker's certificate is not for {host!r}; connect with a name its "
                "certificate lists (subjectAltName), or have it reissued for this one"
            )
        else:
            advice = (
                "the broker's certificate is not signed by a CA this client trusts; set "
                "ca_file / ORBIT_MQ_CA_FILE to the CA that signed it"
            )
        return TlsError(f"{action}: TLS verification failed ({detail}): {advice}")
    return TlsError(
        f"{action}: the TLS handshake failed ({_reason(exc)}); check that the port serves "
        "amqps (RabbitMQ: 5671), and, if the broker asks for a client certificate, "
        "cert_file / key_file"
    )
