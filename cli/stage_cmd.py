"""`orbit-mq stage put|get|ls`: files to and from an endpoint through its staging plugin."""

from __future__ import annotations

import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, Literal

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.table import Table

from orbit_mq import numbers
from orbit_mq.cli.common import (
    EndpointArg,
    JsonFlag,
    TimeoutOption,
    UrlOption,
    guarded,
    run_async,
    settings_for,
)
from orbit_mq.cli.output import console, human_bytes, print_json
from orbit_mq.client import Fabric
from orbit_mq.config import Settings
from orbit_mq.contracts.staging import Listing, Staging
from orbit_mq.errors import ConfigError
from orbit_mq.staging import DEFAULT_WINDOW, TransferResult, get_file, put_file
from orbit_mq.staging import Progress as ProgressCallback

stage_app = typer.Typer(
    name="stage",
    help="Copy files to and from an endpoint through its staging plugin: chunked through the "
    "broker, SHA-256 verified end to end, resumable (run the same command again).",
    no_args_is_help=True,
)


OverwriteFlag = Annotated[
    bool, typer.Option("--overwrite", help="Replace the destination file if it exists.")
]
ChunkOption = Annotated[
    str | None,
    typer.Option(
        "--chunk-size",
        metavar="SIZE",
        help="Chunk size, e.g. 512K, 1M, 4M (default: the endpoint's, 1M).",
        show_default=False,
    ),
]
WindowOption = Annotated[
    int, typer.Option("--window", metavar="N", help="Chunks in flight at once.", min=1)
]
QuietFlag = Annotated[bool, typer.Option("--no-progress", help="Do not draw a progress bar.")]
ResultJson = Annotated[bool, typer.Option("--json", help="Print the result as JSON.")]
RemoteArg = Annotated[
    str,
    typer.Argument(
        metavar="REMOTE", help="Absolute path on the endpoint (~ = its home).", show_default=False
    ),
]
LocalArg = Annotated[
    str, typer.Argument(metavar="LOCAL", help="Local file or directory.", show_default=False)
]


def parse_size(text: str | None) -> int | None:
    """`"4M"` → 4194304, `"512K"`, `"1048576"`, `"2MiB"`; None stays None."""
    if text is None:
        return None
    try:
        return numbers.parse_size(text)
    except ValueError as exc:
        raise ConfigError(f"--chunk-size: {exc}") from None


@contextmanager
def progress_bar(label: str, enabled: bool) -> Iterator[ProgressCallback]:
    """A rich progress bar on stderr (bytes, rate, ETA), fed by the transfer's callback. It
    appears with the first figures, so a transfer refused at once prints only its error."""
    progress = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        disable=not enabled,
    )
    task: TaskID | None = None

    def update(done: int, total: int) -> None:
        nonlocal task
        if task is None:  # a resumed transfer starts part-way: the rate counts from there
            progress.start()
            task = progress.add_task(label, total=total, completed=done)
        progress.update(task, completed=done, total=total)

    try:
        yield update
    finally:
        progress.stop()


async def transfer(
    settings: Settings,
    endpoint: str,
    direction: Literal["put", "get"],
    paths: tuple[str, str],
    show_progress: bool,
    **options: Any,
) -> TransferResult:
    """Run one put or get; `paths` is (source, destination) in the transfer's direction."""
    source, destination = paths
    async with Fabric(settings) as fabric:
        staging = await fabric.endpoint(endpoint).plugin(Staging, session=False)
        label = f"{direction} {Path(source).name}"
        with progress_bar(label, show_progress) as update:
            if direction == "put":
                return await put_file(staging, source, destination, progress=update, **options)
            return await get_file(staging, source, destination, progress=update, **options)


def report(result: TransferResult, endpoint: str, as_json: bool) -> None:
    if as_json:
        print_json({**vars(result), "local": str(result.local), "rate": result.rate})
        return
    remote = f"{endpoint}:{result.remote}"
    source, target = (result.local, remote) if result.direction == "put" else (remote, result.local)
    resumed = f", resumed at {human_bytes(result.resumed_from)}" if result.resumed_from else ""
    console.print(
        f"{source} → {target}: {human_bytes(result.size)} in {result.seconds:.1f} s "
        f"({human_bytes(result.rate)}/s){resumed}",
        soft_wrap=True,
    )
    console.print(f"sha256 {result.sha256}: checksums match (local and endpoint)", soft_wrap=True)


@stage_app.command("put")
@guarded
def put(
    ctx: typer.Context,
    endpoint: EndpointArg,
    local: LocalArg,
    remote: RemoteArg,
    overwrite: OverwriteFlag = False,
    no_parents: Annotated[
        bool,
        typer.Option("--no-parents", help="Fail if the remote directory does not exist."),
    ] = False,
    chunk_size: ChunkOption = None,
    window: WindowOption = DEFAULT_WINDOW,
    no_progress: QuietFlag = False,
    as_json: ResultJson = False,
    timeout: TimeoutOption = None,
    url: UrlOption = None,
) -> None:
    """Upload LOCAL to REMOTE on ENDPOINT (a REMOTE ending in / means into that directory).

    Example: orbit-mq stage put hpc1 big.bin /scratch/alice/big.bin
    """
    result = run_async(
        transfer(
            settings_for(ctx, url=url, timeout=timeout),
            endpoint,
            "put",
            (local, remote),
            not no_progress,
            overwrite=overwrite,
            parents=not no_parents,
            chunk_size=parse_size(chunk_size),
            window=window,
        )
    )
    report(result, endpoint, as_json)


@stage_app.command("get")
@guarded
def get(
    ctx: typer.Context,
    endpoint: EndpointArg,
    remote: RemoteArg,
    local: LocalArg,
    overwrite: OverwriteFlag = False,
    chunk_size: ChunkOption = None,
    window: WindowOption = DEFAULT_WINDOW,
    no_progress: QuietFlag = False,
    as_json: ResultJson = False,
    timeout: TimeoutOption = None,
    url: UrlOption = None,
) -> None:
    """Download REMOTE from ENDPOINT to LOCAL (a file, or a directory to put it in).

    Example: orbit-mq stage get hpc1 /scratch/alice/out.h5 .
    """
    result = run_async(
        transfer(
            settings_for(ctx, url=url, timeout=timeout),
            endpoint,
            "get",
            (remote, local),
            not no_progress,
            overwrite=overwrite,
            chunk_size=parse_size(chunk_size),
            window=window,
        )
    )
    report(result, endpoint, as_json)


async def listing(settings: Settings, endpoint: str, path: str, limit: int) -> Listing:
    """The `list` answer for a directory; for a file, a listing of that one entry."""
    async with Fabric(settings) as fabric:
        staging = await fabric.endpoint(endpoint).plugin(Staging, session=False)
        info = await staging.stat(path=path)
        if info.type != "dir":
            return Listing(path=info.path, entries=[info], total=1, truncated=False)
        return await staging.list_dir(path=path, limit=limit)


def entries_table(found: Listing) -> Table:
    shown, total = len(found.entries), found.total
    more = f" (first {shown} of {total}: use --limit)" if found.truncated else ""
    table = Table(title=f"{found.path}{more}", title_justify="left", box=None)
    for column in ("mode", "size", "modified", "name"):
        table.add_column(column, justify="right" if column == "size" else "left")
    kinds = {"file": stat.S_IFREG, "dir": stat.S_IFDIR, "link": stat.S_IFLNK, "other": 0}
    for entry in found.entries:
        name = entry.name + ("/" if entry.type == "dir" else "")
        if entry.target:
            name += f" -> {entry.target}"
        table.add_row(
            stat.filemode(kinds[entry.type] | entry.mode),
            human_bytes(entry.size),
            entry.mtime.astimezone().strftime("%Y-%m-%d %H:%M"),
            name,
        )
    return table


@stage_app.command("ls")
@guarded
def ls(
    ctx: typer.Context,
    endpoint: EndpointArg,
    path: RemoteArg,
    limit: Annotated[
        int, typer.Option("--limit", "-n", metavar="N", help="At most N entries.", min=1)
    ] = 1000,
    as_json: JsonFlag = False,
    timeout: TimeoutOption = None,
    url: UrlOption = None,
) -> None:
    """List directory PATH on ENDPOINT (or show the one file PATH names).

    Example: orbit-mq stage ls hpc1 /scratch/alice
    """
    found = run_async(listing(settings_for(ctx, url=url, timeout=timeout), endpoint, path, limit))
    if as_json:
        print_json(found.model_dump(mode="json"))
    else:
        console.print(entries_table(found))
