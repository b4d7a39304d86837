"""The staging plugin's parts without a broker: root confinement, partial files and their
rename, resume bookkeeping, the journal of uploads, the base64 codec and the settings."""

from __future__ import annotations

import asyncio
import hashlib
import os
import time
from pathlib import Path

import pytest
from pydantic import ValidationError

from orbit_mq.contracts.staging import codec
from orbit_mq.contracts.staging.errors import (
    ChecksumMismatch,
    DirectoryNotEmpty,
    FileExists,
    FileNotFound,
    IncompleteTransfer,
    InvalidPath,
    NotAFile,
    PathNotAllowed,
    TransferGap,
    TransferNotFound,
)
from orbit_mq.contracts.staging.files import PART_MARK, publish
from orbit_mq.errors import Conflict, InvalidRequest, NotFound, Unauthorized
from orbit_mq.workers.journal import Journal
from orbit_mq.workers.plugins.staging import files
from orbit_mq.workers.plugins.staging.paths import Roots
from orbit_mq.workers.plugins.staging.plugin import chunk_limit
from orbit_mq.workers.plugins.staging.settings import StagingSettings
from orbit_mq.workers.plugins.staging.transfers import (
    Upload,
    UploadRow,
    partial_path,
    write_chunk,
)
from orbit_mq.workers.plugins.staging.uploads import Uploads


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """An allowed root with a file, a directory and, beside it, an outside directory."""
    allowed = tmp_path / "root"
    (allowed / "data").mkdir(parents=True)
    (allowed / "data" / "a.txt").write_text("inside")
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "secret").write_text("secret")
    return allowed


@pytest.fixture
def roots(root: Path) -> Roots:
    return Roots([root])


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def exists(*paths: str | Path) -> list[bool]:
    """Whether each path exists (plain calls: these files are tiny)."""
    return [os.path.lexists(path) for path in paths]


# -- root confinement --------------------------------------------------------------------------


def test_paths_inside_the_roots_resolve(root: Path, roots: Roots) -> None:
    assert roots.resolve(str(root / "data" / "a.txt")) == str(root / "data" / "a.txt")
    assert roots.resolve(str(root / "data" / ".." / "data" / "new.bin")) == str(
        root / "data" / "new.bin"
    )
    assert roots.resolve(str(root)) == str(root)  # the root itself may be listed, written in


def test_traversal_out_of_the_roots_is_refused(root: Path, roots: Roots) -> None:
    path = f"{root}/data/../../outside/secret"
    with pytest.raises(PathNotAllowed) as refused:
        roots.resolve(path)
    error = refused.value
    assert isinstance(error, Unauthorized) and error.code == "unauthorized"
    assert f"{path!r} resolves to {str(root.parent / 'outside' / 'secret')!r}" in error.message
    assert f"outside the allowed roots {root}" in error.message
    assert error.details["roots"] == [str(root)]


@pytest.mark.parametrize("path", ["/etc/passwd", "/", "/tmp/../etc", "//etc"])
def test_absolute_escapes_are_refused(roots: Roots, path: str) -> None:
    with pytest.raises(PathNotAllowed, match="outside the allowed roots"):
        roots.resolve(path)


def test_a_sibling_with_the_root_as_prefix_is_outside(root: Path, roots: Roots) -> None:
    sibling = Path(f"{root}-other")
    sibling.mkdir()
    with pytest.raises(PathNotAllowed):
        roots.resolve(str(sibling / "x"))


def test_symlinks_out_of_the_roots_are_refused(root: Path, roots: Roots) -> None:
    outside = root.parent / "outside"
    (root / "link-file").symlink_to(outside / "secret")
    (root / "link-dir").symlink_to(outside)
    (root / "dangling").symlink_to(outside / "not-yet")
    for path in ("link-file", "link-dir/secret", "link-dir/new-file", "dangling"):
        with pytest.raises(PathNotAllowed, match="resolves to"):
            roots.resolve(str(root / path))


def test_symlinks_inside_the_roots_are_followed(root: Path, roots: Roots) -> None:
    (root / "alias").symlink_to(root / "data")
    assert roots.resolve(str(root / "alias" / "a.txt")) == str(root / "data" / "a.txt")


def test_a_root_given_through_a_symlink_is_resolved(tmp_path: Path, root: Path) -> None:
    (tmp_path / "root-link").symlink_to(root)
    linked = Roots([tmp_path / "root-link"])
    assert linked.paths == (str(root),)
    assert linked.resolve(str(root / "data")) == str(root / "data")


def test_resolve_entry_keeps_the_last_component(root: Path, roots: Roots) -> None:
    (root / "link-out").symlink_to(root.parent / "outside")
    # The link itself lies inside the root: removing it is fine, following it is not.
    assert roots.resolve_entry(str(root / "link-out")) == str(root / "link-out")
    with pytest.raises(PathNotAllowed):
        roots.resolve(str(root / "link-out"))
    assert roots.resolve_entry(f"{root}/data/..") == str(root)
    with pytest.raises(PathNotAllowed):
        roots.resolve_entry(f"{root}/../outside/secret")


@pytest.mark.parametrize("path", ["relative/path", "", "/tmp/a\0b"])
def test_unusable_paths_are_invalid(roots: Roots, path: str) -> None:
    with pytest.raises(InvalidPath) as refused:
        roots.resolve(path)
    assert isinstance(refused.value, InvalidRequest)


def test_home_is_expanded(monkeypatch: pytest.MonkeyPatch, root: Path, roots: Roots) -> None:
    monkeypatch.setenv("HOME", str(root))
    assert roots.resolve("~/data/a.txt") == str(root / "data" / "a.txt")


# -- upload targets and the final rename -------------------------------------------------------


def test_prepare_target_never_overwrites_unless_asked(root: Path, roots: Roots) -> None:
    existing = root / "data" / "a.txt"
    with pytest.raises(FileExists, match="overwrite=True") as refused:
        files.prepare_target(roots, str(existing), overwrite=False, parents=True)
    assert isinstance(refused.value, Conflict)
    assert files.prepare_target(roots, str(existing), overwrite=True, parents=True) == str(existing)
    with pytest.raises(NotAFile, match="is a directory"):
        files.prepare_target(roots, str(root / "data"), overwrite=True, parents=True)


def test_prepare_target_creates_parents_only_when_asked(root: Path, roots: Roots) -> None:
    target = root / "new" / "deeper" / "f.bin"
    with pytest.raises(FileNotFound, match="parents=True"):
        files.prepare_target(roots, str(target), overwrite=False, parents=False)
    assert not (root / "new").exists()
    assert files.prepare_target(roots, str(target), overwrite=False, parents=True) == str(target)
    assert target.parent.is_dir() and not target.exists()


def _upload(root: Path, data: bytes, name: str = "f.bin") -> Upload:
    target = str(root / "data" / name)
    row = UploadRow("t1", "alice", target, len(data), sha(data), False, "", time.time())
    row.partial = partial_path(target, row.id)
    return Upload.create(row)


def test_partial_file_is_hidden_beside_the_target(root: Path) -> None:
    upload = _upload(root, b"x")
    partial = Path(upload.row.partial)
    assert partial.parent == root / "data"
    assert partial.name == f".f.bin{PART_MARK}t1" and partial.exists()
    assert not (root / "data" / "f.bin").exists()  # nothing under the target's name yet
    upload.discard()
    assert not partial.exists()


def test_chunks_are_written_in_order_and_resent_ones_are_harmless(root: Path) -> None:
    data = os.urandom(10_000)
    upload = _upload(root, data)
    assert upload.append(0, data[:4000]) == 4000
    assert upload.append(0, data[:4000]) == 4000  # resent: nothing new
    assert upload.append(3000, data[3000:7000]) == 7000  # overlapping: only the new part
    with pytest.raises(TransferGap, match="send from offset 7000"):
        upload.append(8000, data[8000:])
    assert upload.append(7000, data[7000:]) == 10_000
    assert upload.finish() == sha(data)
    assert Path(upload.row.partial).read_bytes() == data
    upload.close()


async def test_an_early_chunk_waits_for_the_bytes_before_it(root: Path) -> None:
    data = os.urandom(3000)
    upload = _upload(root, data)
    late = asyncio.create_task(write_chunk(upload, 1000, data[1000:], wait=10))
    await asyncio.sleep(0)  # one loop turn: the late chunk has run and now waits
    assert not late.done() and upload.received == 0
    assert await write_chunk(upload, 0, data[:1000], wait=10) >= 1000
    assert await late == 3000
    assert upload.finish() == sha(data)
    upload.close()


async def test_a_gap_that_is_never_filled_times_out(root: Path) -> None:
    upload = _upload(root, b"0123456789")
    with pytest.raises(TransferGap, match="never came"):
        await write_chunk(upload, 5, b"56789", wait=0.05)
    upload.discard()


def test_reopen_resumes_from_the_partial_size_with_the_same_digest(root: Path) -> None:
    data = os.urandom(50_000)
    first = _upload(root, data)
    first.append(0, data[:20_000])
    first.close()  # the endpoint stops; the partial file stays
    again = Upload.reopen(first.row)
    assert again.received == 20_000
    again.append(20_000, data[20_000:])
    assert again.finish() == sha(data)
    again.close()


def test_reopen_restarts_a_partial_longer_than_the_upload(root: Path) -> None:
    upload = _upload(root, b"abc")
    Path(upload.row.partial).write_bytes(b"far too long")
    upload.close()
    assert Upload.reopen(upload.row).received == 0


def test_publish_links_without_overwriting(root: Path) -> None:
    partial, target = root / "data" / ".p", root / "data" / "t.bin"
    partial.write_bytes(b"new")
    publish(str(partial), str(target), overwrite=False)
    assert target.read_bytes() == b"new" and not partial.exists()
    partial.write_bytes(b"newer")
    with pytest.raises(FileExists, match="nothing is sent twice"):
        publish(str(partial), str(target), overwrite=False)
    assert target.read_bytes() == b"new" and partial.exists()  # kept for a resume
    publish(str(partial), str(target), overwrite=True)
    assert target.read_bytes() == b"newer" and not partial.exists()


# -- the uploads of an endpoint and their journal ----------------------------------------------


@pytest.fixture
def uploads(roots: Roots) -> Uploads:
    return Uploads(Journal(None).db, roots)


async def test_a_repeated_begin_resumes_the_same_upload(root: Path, uploads: Uploads) -> None:
    data = os.urandom(4096)
    target = str(root / "data" / "f.bin")
    first, resumed = await uploads.begin("alice", target, len(data), sha(data), False)
    assert not resumed
    first.append(0, data[:1000])
    again, resumed = await uploads.begin("alice", target, len(data), sha(data), True)
    assert resumed and again is first and again.received == 1000 and again.row.overwrite
    other, resumed = await uploads.begin("bob", target, len(data), sha(data), False)
    assert not resumed and other is not first  # another user's upload is never shared
    with pytest.raises(TransferNotFound, match="put_begin again"):
        uploads.get(first.row.id, "bob")


async def test_an_upload_survives_a_restart(root: Path, roots: Roots) -> None:
    journal = Journal(None)
    data = os.urandom(8192)
    target = str(root / "data" / "f.bin")
    before = Uploads(journal.db, roots)
    upload, _ = await before.begin("alice", target, len(data), sha(data), False)
    upload.append(0, data[:5000])
    before.close()  # the endpoint stops
    after = Uploads(journal.db, roots)
    resumed, was_resumed = await after.begin("alice", target, len(data), sha(data), False)
    assert was_resumed and resumed.row.id == upload.row.id and resumed.received == 5000
    resumed.append(5000, data[5000:])
    info = await after.commit(resumed)
    assert info.sha256 == sha(data) and files.sha256_of(target) == sha(data)
    assert exists(upload.row.partial) == [False] and after.table.all() == []


async def test_commit_checks_completeness_and_checksum(root: Path, uploads: Uploads) -> None:
    data = os.urandom(2048)
    target = root / "data" / "f.bin"
    upload, _ = await uploads.begin("alice", str(target), len(data), sha(b"other"), False)
    upload.append(0, data[:1000])
    with pytest.raises(IncompleteTransfer, match="send the rest from offset 1000"):
        await uploads.commit(upload)
    upload.append(1000, data[1000:])
    with pytest.raises(ChecksumMismatch, match="partial upload was deleted"):
        await uploads.commit(upload)
    assert exists(target, upload.row.partial) == [False, False]
    assert uploads.table.all() == [] and len(uploads) == 0


async def test_a_commit_refused_for_a_swapped_directory_leaves_no_partial(
    root: Path, uploads: Uploads
) -> None:
    data = os.urandom(1024)
    directory = root / "data" / "in"
    directory.mkdir()
    upload, _ = await uploads.begin("alice", str(directory / "f.bin"), len(data), sha(data), False)
    upload.append(0, data)
    moved = root / "data" / "moved"
    directory.rename(moved)  # the directory is swapped for a symlink during the upload
    directory.symlink_to(moved)
    with pytest.raises(PathNotAllowed, match="partial upload was deleted"):
        await uploads.commit(upload)
    assert list(moved.iterdir()) == []  # the hidden partial file went too
    assert uploads.table.all() == [] and len(uploads) == 0


async def test_abort_and_stale_cleanup_delete_partials(root: Path, uploads: Uploads) -> None:
    target = str(root / "data" / "f.bin")
    kept, _ = await uploads.begin("alice", target, 10, sha(b"a"), False)
    aborted, _ = await uploads.begin("alice", target, 10, sha(b"b"), False)
    stale, _ = await uploads.begin("alice", target, 10, sha(b"c"), False)
    await uploads.abort(aborted.row.id, "alice")
    assert exists(aborted.row.partial) == [False]
    with pytest.raises(TransferNotFound):
        await uploads.abort(aborted.row.id, "alice")
    long_ago = time.time() - 7200
    os.utime(stale.row.partial, (long_ago, long_ago))
    stale.touched = long_ago
    assert await uploads.clean_stale(max_age=3600) == 1
    assert exists(stale.row.partial, kept.row.partial) == [False, True]
    assert [row.id for row in uploads.table.all()] == [kept.row.id]


# -- other file operations ---------------------------------------------------------------------


def test_listing_is_sorted_paged_and_shows_links(root: Path) -> None:
    for name in ("c", "a", "b"):
        (root / name).write_text(name)
    (root / "z-link").symlink_to("/etc")
    first = files.list_dir(str(root), limit=2)
    assert [e.name for e in first.entries] == ["a", "b"] and first.truncated
    rest = files.list_dir(str(root), limit=10, start_after="b")
    assert [e.name for e in rest.entries] == ["c", "data", "z-link"] and not rest.truncated
    link = rest.entries[-1]
    assert (link.type, link.target) == ("link", "/etc")


def test_remove_removes_links_not_their_targets(root: Path) -> None:
    (root / "link").symlink_to(root / "data")
    assert files.remove_path(str(root / "link"), recursive=False) == 1
    assert (root / "data" / "a.txt").exists()
    with pytest.raises(DirectoryNotEmpty, match="recursive=True"):
        files.remove_path(str(root / "data"), recursive=False)
    assert files.remove_path(str(root / "data"), recursive=True) == 2
    with pytest.raises(FileNotFound) as missing:
        files.remove_path(str(root / "data"), recursive=True)
    assert isinstance(missing.value, NotFound)


def test_digests_are_cached_while_the_file_is_unchanged(root: Path) -> None:
    path = root / "data" / "a.txt"
    cache = files.DigestCache()
    assert cache.digest(str(path)) == sha(b"inside")
    path.write_text("changed!")
    assert cache.digest(str(path)) == sha(b"changed!")


# -- codec and settings ------------------------------------------------------------------------


def test_base64_reads_both_alphabets_and_writes_url_safe() -> None:
    data = bytes([0xFB, 0xFF, 0xFE, 0x3E, 0x00])
    assert codec.encode_base64(data) == "-__-PgA="
    assert codec.decode_base64("-__-PgA=") == data
    assert codec.decode_base64("+//+PgA=") == data
    for bad in ("not base64!", "+_/-"):
        with pytest.raises(ValueError):
            codec.decode_base64(bad)


def test_settings_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ORBIT_MQ_STAGING_ROOTS", "/scratch/a:/data/b,~/x")
    monkeypatch.setenv("ORBIT_MQ_STAGING_CHUNK_SIZE", "4194304")
    settings = StagingSettings()
    assert settings.roots[:2] == [Path("/scratch/a"), Path("/data/b")]
    assert settings.roots[2] == Path("~/x").expanduser()
    assert settings.chunk_size == 4 * 1024 * 1024
    monkeypatch.setenv("ORBIT_MQ_STAGING_ROOTS", "relative")
    with pytest.raises(ValidationError, match="absolute"):
        StagingSettings()


def test_default_roots_are_home_and_tmp(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ORBIT_MQ_STAGING_ROOTS", raising=False)
    assert StagingSettings().roots == [Path.home(), Path("/tmp")]


def test_chunks_fit_a_request_once_base64_encoded() -> None:
    limit = chunk_limit(16 * 1024 * 1024)
    assert limit > 8 * 1024 * 1024 and limit * 4 // 3 + 64 * 1024 <= 16 * 1024 * 1024
