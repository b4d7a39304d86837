"""The job directory (every job browsable on disk) and reading job output.

    $ORBIT_MQ_HOME/endpoints/{endpoint}/jobs/{job_id}/
        spec.json       the spec as submitted (site defaults merged in)
        status.jsonl    one line per state transition: {"seq", "state", "time", "message"}
        stdout, stderr  the job's output, unless the caller chose other paths
        exit_code       a local job's exit status, written by its launcher (launcher.py)
        staging.json    a staged job's plan, staging.jsonl its steps as the job did them
        work/           the job's working directory, unless the caller chose one

Output offsets are byte offsets; text is cut at character boundaries so a multi-byte UTF-8
character is never split between two reads.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import orjson

from orbit_mq.workers.plugins.psij.stagejob import read_steps
from orbit_mq.workers.plugins.psij.states import Step

if TYPE_CHECKING:
    from orbit_mq.workers.plugins.psij.store import JobRow

Stream = Literal["stdout", "stderr"]
TAIL_BYTES = 4096
CHUNK_BYTES = 64 * 1024  # largest job_output event


@dataclass(frozen=True)
class JobDir:
    root: Path

    @classmethod
    def of(cls, home: Path, endpoint: str, job_id: str) -> JobDir:
        return cls(home / "endpoints" / endpoint / "jobs" / job_id)

    @property
    def spec(self) -> Path:
        return self.root / "spec.json"

    @property
    def status(self) -> Path:
        return self.root / "status.jsonl"

    @property
    def stdout(self) -> Path:
        return self.root / "stdout"

    @property
    def stderr(self) -> Path:
        return self.root / "stderr"

    @property
    def exit_code(self) -> Path:
        return self.root / "exit_code"

    @property
    def work(self) -> Path:
        return self.root / "work"

    @property
    def staging_plan(self) -> Path:
        return self.root / "staging.json"

    @property
    def staging_steps(self) -> Path:
        return self.root / "staging.jsonl"

    def prepare(self, spec_json: bytes, plan: dict[str, Any] | None = None) -> None:
        """Create the directory with work/, spec.json and a staged job's plan (blocking: call
        it in a thread)."""
        self.work.mkdir(parents=True, exist_ok=True)
        self.spec.write_bytes(spec_json)
        if plan is not None:
            self.staging_plan.write_bytes(orjson.dumps(plan, option=orjson.OPT_INDENT_2))

    def read_staging_steps(self) -> tuple[list[tuple[str, float]], str | None]:
        """The staging steps the job began ((state, time), in order) and its failure, if any
        (blocking)."""
        return read_steps(self.staging_steps)

    def start_status(self, entry: dict[str, Any]) -> None:
        """status.jsonl with its first line, unless it exists (a job handed over again)."""
        try:
            with self.status.open("xb") as out:
                out.write(orjson.dumps(entry) + b"\n")
        except FileExistsError:
            pass

    def append_status(self, entries: list[dict[str, Any]]) -> None:
        # A few hundred bytes appended locally, like the journal's own inline writes.
        with self.status.open("ab") as out:
            out.write(b"".join(orjson.dumps(entry) + b"\n" for entry in entries))


def prepare_job(row: JobRow, first: dict[str, Any]) -> None:
    """A new job's directory: work/, spec.json, a staged job's plan and status.jsonl with its
    `first` line (`status_line`; blocking: call it in a thread)."""
    job_dir = JobDir(row.job_dir)
    plan = None
    if row.staged:
        directory = Path(row.spec.get("directory") or job_dir.work)
        plan = staging_plan(row.spec, directory, job_dir.staging_steps)
    job_dir.prepare(orjson.dumps(row.spec, option=orjson.OPT_INDENT_2), plan)
    job_dir.start_status(first)


def status_line(
    step: Step, when: float, message: str | None = None, exit_code: int | None = None
) -> dict[str, Any]:
    """A status.jsonl line: the step, when it was taken, its message and, for a final one,
    the exit code."""
    line: dict[str, Any] = {"seq": step.seq, "state": step.state.value, "time": iso(when)}
    line["message"] = message
    if step.state.final:
        line["exit_code"] = exit_code
    return line


def iso(timestamp: float) -> str:
    """UTC ISO 8601 with a `Z`, as pydantic writes the datetimes of every other message."""
    return datetime.fromtimestamp(timestamp, UTC).isoformat().replace("+00:00", "Z")


def staging_plan(spec: dict[str, Any], directory: Path, steps: Path) -> dict[str, Any]:
    """What stagejob.py does for a spec (paths made absolute against the job's directory)."""

    def absolute(path: str) -> str:
        return str(directory / Path(path).expanduser())

    def transfers(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [
            {**item, "source": absolute(item["source"]), "target": absolute(item["target"])}
            for item in items
        ]

    return {
        "command": [spec["executable"], *spec.get("arguments", [])],
        "stage_in": transfers(spec.get("stage_in", [])),
        "stage_out": transfers(spec.get("stage_out", [])),
        "cleanup": [absolute(path) for path in spec.get("cleanup", [])],
        "cleanup_flags": spec.get("cleanup_flags", []),
        "markers": str(steps),
    }


def _width(lead: int) -> int:
    """Bytes in the UTF-8 character that starts with `lead`."""
    if lead < 0x80:
        return 1
    if lead >= 0xF0:
        return 4
    return 3 if lead >= 0xE0 else 2


def utf8_prefix(data: bytes) -> int:
    """Length of the longest prefix of `data` that does not end inside a UTF-8 character."""
    end = len(data)
    for back in range(1, min(4, end) + 1):
        byte = data[end - back]
        if byte & 0xC0 != 0x80:  # the last character starts here: is it complete?
            return end if back >= _width(byte) else end - back
    return end  # only continuation bytes: not UTF-8 anyway, keep everything


def read_chunk(path: Path, offset: int, limit: int, complete: bool) -> tuple[bytes, int]:
    """Up to `limit` bytes of `path` from `offset` and the offset after them. Unless the file is
    `complete` (its writer is done) and the read reached its end, the chunk stops at a character
    boundary. A missing file reads as empty."""
    try:
        with path.open("rb") as source:
            if offset >= os.fstat(source.fileno()).st_size:
                return b"", offset  # nothing new (reading far past the end is EINVAL on Linux)
            source.seek(offset)
            data = source.read(limit)
            at_end = len(data) < limit or not source.read(1)
    except FileNotFoundError:
        return b"", offset
    if not (complete and at_end):
        data = data[: utf8_prefix(data)]
    return data, offset + len(data)


def read_page(path: Path, offset: int, limit: int, complete: bool) -> tuple[str, int]:
    data, end = read_chunk(path, offset, limit, complete)
    return data.decode("utf-8", errors="replace"), end


def read_tail(path: Path, size: int = TAIL_BYTES) -> str:
    """The last `size` bytes of `path` as text (empty when missing)."""
    try:
        with path.open("rb") as source:
            length = source.seek(0, os.SEEK_END)
            source.seek(max(0, length - size))
            data = source.read(size)
    except FileNotFoundError:
        return ""
    start = 0
    while start < min(3, len(data)) and data[start] & 0xC0 == 0x80:
        start += 1  # do not begin halfway through a character
    return data[start:].decode("utf-8", errors="replace")


def file_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def read_exit_code(path: Path) -> int | None:
    """The code the local wrapper recorded, or None (not there yet, or still being written)."""
    try:
        text = path.read_text().strip()
    except (FileNotFoundError, UnicodeDecodeError):
        return None
    try:
        return int(text)
    except ValueError:
        return None


def last_line(path: Path) -> str:
    """The last non-empty line of the file's tail, for failure messages."""
    lines = [line.strip() for line in read_tail(path, 1024).splitlines()]
    return next((line for line in reversed(lines) if line), "")


@dataclass(frozen=True)
class Chunk:
    """A piece of a job's output, `offset` bytes into its stream."""

    job_id: str
    stream: Stream
    offset: int
    data: bytes


def read_output(row: JobRow, complete: bool, budget: int) -> list[Chunk]:
    """Output of a streamed job written since the last chunk announced, at most `budget` bytes
    per stream in chunks of at most CHUNK_BYTES (blocking; none for jobs not streamed)."""
    chunks: list[Chunk] = []
    if not row.stream_output:
        return chunks
    streams: tuple[tuple[Stream, Path, int], ...] = (
        ("stdout", row.stdout_path, row.stdout_sent),
        ("stderr", row.stderr_path, row.stderr_sent),
    )
    for stream, path, offset in streams:
        left = budget
        while left > 0:
            data, end = read_chunk(path, offset, min(CHUNK_BYTES, left), complete)
            if not data:
                break
            chunks.append(Chunk(row.job_id, stream, offset, data))
            offset, left = end, left - len(data)
    return chunks
