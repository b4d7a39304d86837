"""The staging plugin through a real endpoint and the real broker: whole files both ways with
their SHA-256, confinement to the allowed roots, never overwriting, resume after an
interruption (new Fabric, endpoint restart, dropped connection, partial download), and the
`orbit-mq stage` commands."""

from __future__ import annotations

import asyncio
import hashlib
import os
import socket
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
import pytest
from conftest import StartEndpoint, one_node, wait_online
from test_cli import assert_one_error_line, run_cli
from yarl import URL

import orbit_mq
from orbit_mq.config import Settings
from orbit_mq.contracts.staging import (
    ChecksumMismatch,
    ChunkTooLarge,
    FileExists,
    NotADirectory,
    PathNotAllowed,
    TransferGap,
)
from orbit_mq.contracts.staging.codec import encode_base64
from orbit_mq.contracts.staging.files import PART_MARK
from orbit_mq.errors import Conflict, InvalidRequest
from orbit_mq.workers.plugins.staging import Staging

MiB = 1024 * 1024
EndpointProcess = Callable[..., subprocess.Popen[str]]


class Interrupted(Exception):
    """Raised from a progress callback to cut a transfer off part-way."""


def interrupt_at(limit: int) -> Callable[[int, int], None]:
    def progress(done: int, total: int) -> None:
        if done >= limit:
            raise Interrupted(f"{done} of {total}")

    return progress


def random_file(path: Path, size: int) -> str:
    """Write `size` random bytes to `path` in blocks; their SHA-256."""
    path.parent.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    with path.open("wb") as file:
        for start in range(0, size, 8 * MiB):
            block = os.urandom(min(8 * MiB, size - start))
            digest.update(block)
            file.write(block)
    return digest.hexdigest()


def sha256_of(path: Path) -> str:
    with path.open("rb") as file:
        return hashlib.file_digest(file, "sha256").hexdigest()


def partials(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if PART_MARK in p.name)


def exists(path: Path) -> bool:
    return path.exists()


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """The endpoint's only allowed root, with a link out of it and an outside file."""
    allowed = tmp_path / "root"
    allowed.mkdir()
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "secret").write_text("secret")
    (allowed / "link-out").symlink_to(tmp_path / "outside")
    (allowed / "link-file").symlink_to(tmp_path / "outside" / "secret")
    return allowed


@pytest.fixture
async def staging(
    start_endpoint: StartEndpoint, fabric: orbit_mq.Fabric, name: str, root: Path
) -> orbit_mq.PluginProxy:
    await start_endpoint(plugins=[Staging.configured(roots=[root])])
    return await fabric.endpoint(name).plugin("staging", session=False)


async def test_200mb_file_both_ways_with_checksum(
    staging: orbit_mq.PluginProxy, root: Path, tmp_path: Path
) -> None:
    size = 200_000_000  # not a multiple of the chunk size: the last chunk is short
    source = tmp_path / "local" / "big.bin"
    expected = await asyncio.to_thread(random_file, source, size)
    remote = root / "in" / "big.bin"  # its directory is created

    put = await orbit_mq.put_file(staging, source, str(remote))

    assert (put.size, put.sha256, put.transferred, put.resumed_from) == (size, expected, size, 0)
    assert put.remote == str(remote)
    assert await asyncio.to_thread(sha256_of, remote) == expected
    assert await asyncio.to_thread(partials, remote.parent) == []

    got = await orbit_mq.get_file(staging, str(remote), f"{tmp_path}/back/")

    assert (got.size, got.sha256, got.transferred) == (size, expected, size)
    assert got.local == tmp_path / "back" / "big.bin"
    assert await asyncio.to_thread(sha256_of, got.local) == expected
    assert await asyncio.to_thread(partials, got.local.parent) == []
    for done in (source, remote, got.local):  # 600 MB that pytest would keep around
        await asyncio.to_thread(done.unlink)


async def test_escapes_from_the_roots_are_refused(
    staging: orbit_mq.PluginProxy, root: Path, tmp_path: Path
) -> None:
    secret_sha = hashlib.sha256(b"secret").hexdigest()
    refused = {
        "traversal": ("stat", {"path": f"{root}/../outside/secret"}),
        "deep traversal": ("get_begin", {"path": f"{root}/a/../../../../etc/passwd"}),
        "absolute": ("get_chunk", {"path": "/etc/passwd", "offset": 0, "length": 10}),
        "symlinked file": ("get_begin", {"path": f"{root}/link-file"}),
        "symlinked dir": ("list", {"path": f"{root}/link-out"}),
        "write through link": (
            "put_begin",
            {"path": f"{root}/link-out/planted", "size": 6, "sha256": secret_sha},
        ),
        "mkdir outside": ("mkdir", {"path": f"{root}/../made"}),
        "the root itself": ("remove", {"path": f"{root}/", "recursive": True}),
    }
    for what, (method, params) in refused.items():
        with pytest.raises(PathNotAllowed) as error:
            await staging.call(method, params)
        assert error.value.code == "unauthorized", what
        assert str(root) in error.value.message, what
    traversal = f"{root}/../outside/x"
    with pytest.raises(PathNotAllowed, match=r"resolves to .* outside the allowed roots"):
        await orbit_mq.put_file(staging, tmp_path / "outside" / "secret", traversal)
    assert not await asyncio.to_thread(exists, tmp_path / "outside" / "x")
    assert not await asyncio.to_thread(exists, tmp_path / "made")
    # Removing the link itself is fine: it lives inside the root (its target stays).
    removed = await staging.remove(path=f"{root}/link-out")
    assert removed.removed == 1
    assert await asyncio.to_thread(exists, tmp_path / "outside" / "secret")


async def test_never_overwrites_unless_asked(
    staging: orbit_mq.PluginProxy, root: Path, tmp_path: Path
) -> None:
    first, second = tmp_path / "first", tmp_path / "second"
    await asyncio.to_thread(random_file, first, 1000)
    second_sha = await asyncio.to_thread(random_file, second, 2000)
    target = root / "f.bin"
    await orbit_mq.put_file(staging, first, str(target))

    with pytest.raises(FileExists, match="overwrite") as refused:
        await orbit_mq.put_file(staging, second, str(target))
    assert isinstance(refused.value, Conflict)
    with pytest.raises(FileExists, match="overwrite"):
        await orbit_mq.get_file(staging, str(target), first)
    assert (await staging.stat(path=str(target))).size == 1000

    replaced = await orbit_mq.put_file(staging, second, str(target), overwrite=True)
    assert replaced.sha256 == second_sha == await asyncio.to_thread(sha256_of, target)
    assert await asyncio.to_thread(partials, root) == []


async def test_interrupted_upload_resumes_with_a_new_fabric(
    staging: orbit_mq.PluginProxy, root: Path, tmp_path: Path, settings: Settings, name: str
) -> None:
    size = 24 * MiB
    source = tmp_path / "up.bin"
    expected = await asyncio.to_thread(random_file, source, size)
    remote = root / "up.bin"
    with pytest.raises(Interrupted):
        await orbit_mq.put_file(staging, source, str(remote), progress=interrupt_at(size // 2))
    assert not await asyncio.to_thread(exists, remote)
    assert len(await asyncio.to_thread(partials, root)) == 1  # hidden, kept for a resume

    async with orbit_mq.Fabric(settings) as again:
        proxy = await again.endpoint(name).plugin("staging", session=False)
        result = await orbit_mq.put_file(proxy, source, str(remote))

    assert result.resumed_from >= size // 2
    assert result.transferred == size - result.resumed_from
    assert result.sha256 == expected == await asyncio.to_thread(sha256_of, remote)
    assert await asyncio.to_thread(partials, root) == []


async def test_interrupted_upload_resumes_after_an_endpoint_restart(
    start_endpoint: StartEndpoint, fabric: orbit_mq.Fabric, name: str, root: Path, tmp_path: Path
) -> None:
    plugin = Staging.configured(roots=[root])
    first = await start_endpoint(plugins=[plugin])
    proxy = await fabric.endpoint(name).plugin("staging", session=False)
    size = 16 * MiB
    source = tmp_path / "up.bin"
    expected = await asyncio.to_thread(random_file, source, size)
    with pytest.raises(Interrupted):
        await orbit_mq.put_file(proxy, source, f"{root}/up.bin", progress=interrupt_at(size // 2))
    await first.stop(grace=5)

    await start_endpoint(plugins=[plugin])  # same name, same journal
    result = await orbit_mq.put_file(proxy, source, f"{root}/up.bin")

    assert result.resumed_from >= size // 2 and result.sha256 == expected
    assert await asyncio.to_thread(sha256_of, root / "up.bin") == expected


def broker_sockets(port: int) -> set[int]:
    """File descriptors of this process's TCP connections to the broker."""
    return {
        c.fd
        for c in psutil.Process().net_connections(kind="tcp")
        if c.raddr and c.raddr.port == port and c.status == psutil.CONN_ESTABLISHED
    }


def cut(fds: set[int]) -> None:
    """Cut TCP connections as a failing network would: the peer sees them end."""
    for fd in fds:
        with socket.socket(fileno=os.dup(fd)) as sock:
            sock.shutdown(socket.SHUT_RDWR)


async def test_dropped_connection_is_resumed_within_the_same_call(
    staging: orbit_mq.PluginProxy, settings: Settings, name: str, root: Path, tmp_path: Path
) -> None:
    size = 32 * MiB
    source = tmp_path / "up.bin"
    expected = await asyncio.to_thread(random_file, source, size)
    port = URL(one_node(settings.url)).port or 5672
    before = broker_sockets(port)
    async with orbit_mq.Fabric(settings) as fabric:
        proxy = await fabric.endpoint(name).plugin("staging", session=False)
        ours = broker_sockets(port) - before  # the new Fabric's connection
        assert ours
        dropped: list[int] = []

        def drop_once(done: int, total: int) -> None:
            if done >= total // 3 and not dropped:
                dropped.append(done)
                cut(ours)

        result = await orbit_mq.put_file(proxy, source, f"{root}/up.bin", progress=drop_once)

    assert dropped and result.attempts >= 2
    assert result.sha256 == expected == await asyncio.to_thread(sha256_of, root / "up.bin")
    assert result.transferred < size + size - dropped[0]  # the bytes received were kept


async def test_interrupted_download_resumes_from_the_local_partial(
    staging: orbit_mq.PluginProxy, root: Path, tmp_path: Path
) -> None:
    size = 24 * MiB
    expected = await asyncio.to_thread(random_file, root / "down.bin", size)
    target = tmp_path / "down.bin"
    with pytest.raises(Interrupted):
        await orbit_mq.get_file(
            staging, f"{root}/down.bin", target, progress=interrupt_at(size // 2)
        )
    assert not await asyncio.to_thread(exists, target)
    assert await asyncio.to_thread(partials, tmp_path) == [f".down.bin{PART_MARK}{expected[:16]}"]

    result = await orbit_mq.get_file(staging, f"{root}/down.bin", target)

    assert result.resumed_from >= size // 2
    assert result.transferred == size - result.resumed_from
    assert result.sha256 == expected == await asyncio.to_thread(sha256_of, target)
    assert await asyncio.to_thread(partials, tmp_path) == []


async def test_a_wrong_checksum_leaves_nothing(staging: orbit_mq.PluginProxy, root: Path) -> None:
    data = b"the real bytes"
    begun = await staging.put_begin(
        path=f"{root}/x.bin", size=len(data), sha256=hashlib.sha256(b"other").hexdigest()
    )
    ack = await staging.put_chunk(transfer_id=begun.transfer_id, offset=0, data=encode_base64(data))
    assert ack.received == len(data)
    with pytest.raises(ChecksumMismatch, match="partial upload was deleted") as mismatch:
        await staging.put_commit(transfer_id=begun.transfer_id)
    assert mismatch.value.details["expected"] == hashlib.sha256(b"other").hexdigest()
    assert sorted(await asyncio.to_thread(os.listdir, root)) == ["link-file", "link-out"]


async def test_bad_chunks_get_clear_errors(staging: orbit_mq.PluginProxy, root: Path) -> None:
    with pytest.raises(ChunkTooLarge, match=r"over this endpoint's .* limit"):
        await staging.put_begin(path=f"{root}/x", size=1, sha256="0" * 64, chunk_size=64 * MiB)
    begun = await staging.put_begin(path=f"{root}/x", size=10**10, sha256="0" * 64)
    with pytest.raises(InvalidRequest, match="not valid base64"):
        await staging.put_chunk(transfer_id=begun.transfer_id, offset=0, data="!!!!")
    with pytest.raises(InvalidRequest, match="past the declared size"):
        await staging.put_chunk(
            transfer_id=begun.transfer_id, offset=10**10 - 1, data=encode_base64(b"ab")
        )
    with pytest.raises(TransferGap, match="send from offset 0"):
        await staging.put_chunk(
            transfer_id=begun.transfer_id, offset=10**9, data=encode_base64(b"a")
        )
    with pytest.raises(orbit_mq.InvalidArguments, match="sha256"):  # refused before sending
        await staging.put_begin(path=f"{root}/y", size=1, sha256="nothex")
    with pytest.raises(InvalidRequest, match="sha256"):  # and by the endpoint
        params = {"path": f"{root}/y", "size": 1, "sha256": "nothex"}
        await orbit_mq.remote(staging).call("put_begin", params, checked=False)
    await staging.put_abort(transfer_id=begun.transfer_id)
    assert await asyncio.to_thread(partials, root) == []


async def test_stat_list_mkdir_remove(staging: orbit_mq.PluginProxy, root: Path) -> None:
    made = await staging.mkdir(path=f"{root}/a/b", parents=True)
    assert (made.type, made.path) == ("dir", f"{root}/a/b")
    with pytest.raises(FileExists, match="exist_ok"):
        await staging.mkdir(path=f"{root}/a/b")
    await asyncio.to_thread((root / "a" / "f.txt").write_text, "hello")
    info = await staging.stat(path=f"{root}/a/f.txt", checksum=True)
    assert (info.type, info.size, info.sha256) == ("file", 5, hashlib.sha256(b"hello").hexdigest())
    listing = await staging.call("list", {"path": f"{root}/a", "limit": 1})
    assert [entry.name for entry in listing.entries] == ["b"] and listing.truncated
    with pytest.raises(NotADirectory):
        await staging.call("list", {"path": f"{root}/a/f.txt"})
    assert (await staging.remove(path=f"{root}/a", recursive=True)).removed == 3
    assert await staging.roots() == [str(root)]


async def test_cli_stage_put_ls_and_a_refused_path(
    settings: Settings,
    name: str,
    fabric: orbit_mq.Fabric,
    endpoint_process: EndpointProcess,
    root: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("ORBIT_MQ_STAGING_ROOTS", str(root))  # for the endpoint process only
    endpoint_process("--plugins", "staging")
    source = tmp_path / "big.bin"
    expected = await asyncio.to_thread(random_file, source, 3 * MiB + 5)
    await wait_online(fabric, name)

    put = await run_cli(settings, "stage", "put", name, str(source), f"{root}/x/big.bin")
    assert put.code == 0, put
    assert f"sha256 {expected}: checksums match" in put.stdout
    assert await asyncio.to_thread(sha256_of, root / "x" / "big.bin") == expected

    listed = await run_cli(settings, "stage", "ls", name, f"{root}/x", "--json")
    assert listed.code == 0, listed
    found: Any = listed.json()
    assert [(e["name"], e["size"]) for e in found["entries"]] == [("big.bin", 3 * MiB + 5)]
    table = await run_cli(settings, "stage", "ls", name, f"{root}/x")
    assert "big.bin" in table.stdout and "-rw-" in table.stdout

    escape = f"{root}/{'../' * 30}etc/passwd"
    refused = await run_cli(settings, "stage", "put", name, str(source), escape)
    assert_one_error_line(
        refused, 1, f"{escape!r} resolves to '/etc/passwd'", f"outside the allowed roots {root}"
    )
    again = await run_cli(settings, "stage", "put", name, str(source), f"{root}/x/big.bin")
    assert_one_error_line(again, 1, "already exists", "--overwrite")
