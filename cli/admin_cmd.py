"""`orbit-mq admin …`: least-privilege broker users for endpoints and clients, and an audit.

Run as a broker administrator (`ORBIT_MQ_URL` or --url with an administrator's credentials);
the rights given are explained in docs/security.md.
"""

from __future__ import annotations

import shlex
from collections.abc import Awaitable, Callable
from typing import Annotated, TypeVar

import typer

from orbit_mq import admin
from orbit_mq.broker_admin import Accounts, open_accounts, vhost_of
from orbit_mq.cli.common import (
    EXIT_ERROR,
    JsonFlag,
    UrlOption,
    guarded,
    run_async,
    settings_for,
    split_csv,
)
from orbit_mq.cli.output import print_json
from orbit_mq.config import Settings
from orbit_mq.permissions import Audit, Role

T = TypeVar("T")

admin_app = typer.Typer(
    help="Make least-privilege broker users for endpoints and clients, and audit them "
    "(docs/security.md). Run it as a broker administrator.",
    no_args_is_help=True,
)
endpoint_users = typer.Typer(help="Broker users of endpoints.", no_args_is_help=True)
client_users = typer.Typer(help="Broker users of clients (the CLI, the SDK).", no_args_is_help=True)
admin_app.add_typer(endpoint_users, name="endpoint")
admin_app.add_typer(client_users, name="user")

ManagementUrl = Annotated[
    str | None,
    typer.Option(
        "--management-url",
        metavar="URL",
        help="RabbitMQ management API, http[s]://[user:pass@]host:port (default: the broker "
        "URL's host, port 15672, with its credentials).",
        show_default=False,
    ),
]
UseRabbitmqctl = Annotated[
    bool,
    typer.Option(
        "--rabbitmqctl",
        help="Use rabbitmqctl on this host instead of the management API (the default when "
        "the API does not answer and the broker is local).",
    ),
]
NameArg = Annotated[str, typer.Argument(metavar="NAME", show_default=False)]


def _with_accounts(
    settings: Settings,
    management_url: str | None,
    rabbitmqctl: bool,
    action: Callable[[Accounts], Awaitable[T]],
) -> T:
    async def main() -> T:
        accounts = await open_accounts(settings.url, management_url, rabbitmqctl)
        try:
            return await action(accounts)
        finally:
            await accounts.close()

    return run_async(main())


def _add(
    ctx: typer.Context,
    role: Role,
    name: str,
    url: str | None,
    management_url: str | None,
    rabbitmqctl: bool,
    all_events: bool = False,
    pool: str | None = None,
) -> tuple[admin.NewUser, str]:
    settings = settings_for(ctx, url=url)

    async def make(accounts: Accounts) -> tuple[admin.NewUser, str]:
        made = await admin.add_user(accounts, settings, role, name, all_events, pool)
        return made, accounts.where

    return _with_accounts(settings, management_url, rabbitmqctl, make)


@endpoint_users.command("add")
@guarded
def add_endpoint(
    ctx: typer.Context,
    name: NameArg,
    allow: Annotated[
        list[str] | None,
        typer.Option(
            "--allow",
            metavar="USER",
            help="A client user the endpoint will serve (repeatable); only goes into the "
            "printed start command.",
            show_default=False,
        ),
    ] = None,
    pool: Annotated[
        str | None,
        typer.Option(
            "--pool",
            metavar="POOL",
            help="The endpoint pool it is a member of: it may serve POOL's request queues too.",
            show_default=False,
        ),
    ] = None,
    url: UrlOption = None,
    management_url: ManagementUrl = None,
    rabbitmqctl: UseRabbitmqctl = False,
    as_json: JsonFlag = False,
) -> None:
    """Make endpoint NAME's broker user; prints its password (once) and how to start it."""
    made, where = _add(ctx, Role.ENDPOINT, name, url, management_url, rabbitmqctl, pool=pool)
    allowed = split_csv(allow)
    flags = " ".join(f"--allow {shlex.quote(user)}" for user in allowed) or "--allow USER"
    flags += f" --pool {pool}" if pool else ""
    start = f"ORBIT_MQ_URL={shlex.quote(made.url)} orbit-mq endpoint start --name {name} {flags}"
    if as_json:
        print_json(_described(made) | {"start": start})
        return
    _say_made(made, where)
    typer.echo(f"Start the endpoint with:\n\n  {start}\n")
    if not allowed:
        typer.echo(
            "(--allow names the client users it serves, made with `orbit-mq admin user add`; "
            f"without it, it serves only calls made as {name!r}, which may not send any)"
        )


@client_users.command("add")
@guarded
def add_client(
    ctx: typer.Context,
    name: NameArg,
    all_events: Annotated[
        bool,
        typer.Option(
            "--all-events",
            help="Let it read every user's events and the endpoints' audit events (for "
            "operators and the users an endpoint names admins); others read only their own.",
        ),
    ] = False,
    url: UrlOption = None,
    management_url: ManagementUrl = None,
    rabbitmqctl: UseRabbitmqctl = False,
    as_json: JsonFlag = False,
) -> None:
    """Make client NAME's broker user; prints its password (once) and the URL to use."""
    made, where = _add(ctx, Role.CLIENT, name, url, management_url, rabbitmqctl, all_events)
    if as_json:
        print_json(_described(made))
        return
    _say_made(made, where)
    typer.echo(f"Endpoints serve it once started with --allow {name} (or ORBIT_MQ_ALLOWED_USERS).")


def _described(made: admin.NewUser) -> dict[str, str]:
    return {
        "user": made.name,
        "role": made.role.value,
        "vhost": made.vhost,
        "password": made.password,
        "url": made.url,
    }


def _say_made(made: admin.NewUser, where: str) -> None:
    typer.echo(
        f"Made {made.role.value} user {made.name!r} on vhost {made.vhost!r} ({where}).\n"
        "Its password is shown only now; keep the URL where only its owner can read it:\n\n"
        f"  ORBIT_MQ_URL={shlex.quote(made.url)}\n"
    )


@admin_app.command("remove")
@guarded
def remove(
    ctx: typer.Context,
    name: NameArg,
    url: UrlOption = None,
    management_url: ManagementUrl = None,
    rabbitmqctl: UseRabbitmqctl = False,
) -> None:
    """Delete broker user NAME made by `orbit-mq admin` (endpoint or client)."""
    settings = settings_for(ctx, url=url)

    async def delete(accounts: Accounts) -> Role:
        return await admin.remove_user(accounts, name)

    role = _with_accounts(settings, management_url, rabbitmqctl, delete)
    typer.echo(f"Removed {role.value} user {name!r}.")


@admin_app.command("check")
@guarded
def check(
    ctx: typer.Context,
    url: UrlOption = None,
    management_url: ManagementUrl = None,
    rabbitmqctl: UseRabbitmqctl = False,
    as_json: JsonFlag = False,
) -> None:
    """Audit the users with rights on the broker URL's vhost against the least-privilege
    model; exits 1 if any has more than its role needs."""
    settings = settings_for(ctx, url=url)
    vhost = vhost_of(settings.url)

    async def audit(accounts: Accounts) -> Audit:
        return await admin.check(accounts, vhost)

    report = _with_accounts(settings, management_url, rabbitmqctl, audit)
    if as_json:
        print_json(
            {
                "vhost": report.vhost,
                "checked": report.checked,
                "administrators": report.administrators,
                "findings": [vars(finding) for finding in report.findings],
            }
        )
    else:
        _print_audit(report)
    if report.too_broad:
        raise typer.Exit(EXIT_ERROR)


def _print_audit(report: Audit) -> None:
    for finding in report.findings:
        label = "too broad" if finding.too_broad else "missing"
        typer.echo(f"{label}: {finding.user}: {finding.problem}")
    if report.administrators:
        typer.echo(
            "administrators, not checked (full rights are theirs by design; no endpoint or "
            f"client should use them): {', '.join(report.administrators)}"
        )
    typer.echo(
        f"vhost {report.vhost!r}: {len(report.checked)} users checked, "
        f"{len({f.user for f in report.too_broad})} with rights too broad"
    )
