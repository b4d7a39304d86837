"""Small readers shared by the scheduler parsers: durations, numbers, times and memory."""

from __future__ import annotations

import re
from datetime import datetime

# Words schedulers print for "no limit" or "not known".
_NO_VALUE = frozenset(
    {"", "n/a", "none", "(null)", "unlimited", "infinite", "not_set", "unknown", "--"}
)

_CLOCK = re.compile(r"^(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?$")
_MEMORY = re.compile(r"^(\d+(?:\.\d+)?)\s*([kmgtp]?)(b|w)?$", re.IGNORECASE)
_UNIT_MB = {"": 1 / (1024 * 1024), "k": 1 / 1024, "m": 1, "g": 1024, "t": 1024**2, "p": 1024**3}


def is_blank(text: str | None) -> bool:
    """True for a value that means nothing: empty, N/A, (null), UNLIMITED, …"""
    return text is None or text.strip().lower() in _NO_VALUE


def to_int(text: str | None) -> int | None:
    """The leading integer of `text` (`22900+` → 22900), or None."""
    if is_blank(text):
        return None
    assert text is not None
    match = re.match(r"\s*(\d+)", text)
    return int(match.group(1)) if match else None


def clock_seconds(text: str | None) -> int | None:
    """Seconds in a Slurm duration (`D-HH:MM:SS`, `D-HH`, `HH:MM:SS`, `MM:SS`, or `MM`:
    a lone number is minutes); None for no limit or an unreadable one."""
    return _clock(text, bare_unit=60)


def pbs_seconds(text: str | None) -> int | None:
    """Seconds in a PBS duration: `HH:MM:SS`, `MM:SS` or plain seconds."""
    return _clock(text, bare_unit=1)


def _clock(text: str | None, bare_unit: int) -> int | None:
    if is_blank(text):
        return None
    assert text is not None
    match = _CLOCK.match(text.strip())
    if match is None:
        return None
    days, *parts = match.groups()
    numbers = [int(part) for part in parts if part is not None]
    if days is None and len(numbers) == 1:
        return numbers[0] * bare_unit
    if days is not None and len(numbers) == 1:  # D-HH
        numbers = [numbers[0], 0, 0]
    elif len(numbers) == 2:  # MM:SS, or HH:MM after a day count
        numbers = [0, *numbers] if days is None else [*numbers, 0]
    hours, minutes, seconds = numbers
    return (int(days or 0) * 24 + hours) * 3600 + minutes * 60 + seconds


def local_time(text: str | None, formats: tuple[str, ...] = ()) -> datetime | None:
    """An aware datetime from a scheduler timestamp in the host's local time, or None.

    ISO 8601 (Slurm) is always tried; `formats` adds strptime patterns (PBS's ctime form).
    """
    if is_blank(text):
        return None
    assert text is not None
    value = text.strip()
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        parsed = None
        for pattern in formats:
            try:
                parsed = datetime.strptime(value, pattern)
                break
            except ValueError:
                continue
    if parsed is None:
        return None
    return parsed if parsed.tzinfo is not None else parsed.astimezone()


def memory_mb(text: str | None) -> int | None:
    """Megabytes in a memory figure such as `196608kb`, `32gb`, `4096mb` or `1024` (bytes)."""
    if is_blank(text):
        return None
    assert text is not None
    match = _MEMORY.match(text.strip())
    if match is None:
        return None
    amount, unit, word = match.groups()
    factor = _UNIT_MB[unit.lower()] * (8 if (word or "").lower() == "w" else 1)
    return int(float(amount) * factor)


def split_list(text: str | None, separator: str = ",") -> list[str]:
    """The non-blank items of a separated list."""
    if is_blank(text):
        return []
    assert text is not None
    return [item.strip() for item in text.split(separator) if item.strip()]
