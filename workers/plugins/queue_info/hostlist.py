"""Slurm hostlist expressions in pure Python: `node[01-03,7],gpu[1-2]` → node01 … gpu2.

The same expansion `scontrol show hostnames` performs, without a subprocess: ranges keep
their zero padding, several bracket groups in one name multiply (`r[1-2]-n[1-2]` → four
hosts), and commas inside brackets do not split names.
"""

from __future__ import annotations

import itertools
import re

from orbit_mq.contracts.queue_info.errors import InvalidHostlist

MAX_HOSTS = 1_000_000  # a typo such as `n[1-999999999]` must not exhaust memory

_GROUP = re.compile(r"\[([^\[\]]*)\]")


def split_top_level(text: str) -> list[str]:
    """`text` split on the commas outside brackets."""
    parts: list[str] = []
    depth, start = 0, 0
    for index, char in enumerate(text):
        if char == "[":
            depth += 1
        elif char == "]":
            depth -= 1
            if depth < 0:
                raise InvalidHostlist(f"unbalanced ']' in hostlist {text!r}")
        elif char == "," and depth == 0:
            parts.append(text[start:index])
            start = index + 1
    if depth != 0:
        raise InvalidHostlist(f"unbalanced '[' in hostlist {text!r}")
    parts.append(text[start:])
    return [part.strip() for part in parts if part.strip()]


def _range_values(item: str, expression: str) -> list[str]:
    low, sep, high = item.partition("-")
    if not low.isdigit() or (sep and not high.isdigit()):
        raise InvalidHostlist(f"bad range {item!r} in hostlist {expression!r}: use e.g. 01-10")
    if not sep:
        return [low]
    first, last = int(low), int(high)
    if last < first:
        raise InvalidHostlist(f"descending range {item!r} in hostlist {expression!r}")
    if last - first >= MAX_HOSTS:
        raise InvalidHostlist(f"range {item!r} in hostlist {expression!r} is too large")
    width = len(low)
    return [str(value).zfill(width) for value in range(first, last + 1)]


def _expand_name(name: str, expression: str) -> list[str]:
    pieces = _GROUP.split(name)  # literal, group, literal, group, …, literal
    choices: list[list[str]] = []
    for index, piece in enumerate(pieces):
        if index % 2 == 0:
            choices.append([piece])
        else:
            values = [v for item in piece.split(",") for v in _range_values(item, expression)]
            choices.append(values)
    count = 1
    for values in choices:
        count *= len(values)
    if count > MAX_HOSTS:
        raise InvalidHostlist(f"hostlist {expression!r} names more than {MAX_HOSTS} hosts")
    return ["".join(combo) for combo in itertools.product(*choices)]


def expand_hostlist(expression: str) -> list[str]:
    """Every host named by a Slurm hostlist expression, in order (duplicates kept)."""
    text = expression.strip()
    if not text or text in ("(null)", "None", "N/A"):
        return []
    hosts: list[str] = []
    for name in split_top_level(text):
        hosts.extend(_expand_name(name, text))
        if len(hosts) > MAX_HOSTS:
            raise InvalidHostlist(f"hostlist {text!r} names more than {MAX_HOSTS} hosts")
    return hosts
