"""Plugins are found through the `orbit_mq.plugins` entry point group.

A third-party package adds one with, in its pyproject.toml:

    [project.entry-points."orbit_mq.plugins"]
    mytool = "mypackage.plugin:MyTool"

An endpoint started without a plugin list serves every installed plugin that says it can work
on this host (`Plugin.is_available()`: queue_info, for one, only where a batch system exists);
a plugin named explicitly is loaded regardless.
"""

from __future__ import annotations

from importlib.metadata import EntryPoint, entry_points

from orbit_mq.errors import ConfigError
from orbit_mq.workers.logs import bounded_logger
from orbit_mq.workers.plugin import Plugin

GROUP = "orbit_mq.plugins"

log = bounded_logger("orbit_mq.endpoint")


def known_plugins() -> dict[str, EntryPoint]:
    return {ep.name: ep for ep in entry_points(group=GROUP)}


def load_plugin(name: str) -> type[Plugin]:
    known = known_plugins()
    entry = known.get(name)
    if entry is None:
        raise ConfigError(
            f"unknown plugin {name!r}; known plugins: {', '.join(sorted(known)) or 'none'}"
        )
    return _load(entry)


def _load(entry: EntryPoint) -> type[Plugin]:
    try:
        cls = entry.load()
    except Exception as exc:
        raise ConfigError(f"plugin {entry.name!r} ({entry.value}) failed to import: {exc}") from exc
    if not (isinstance(cls, type) and issubclass(cls, Plugin)):
        raise ConfigError(f"plugin {entry.name!r} ({entry.value}) is not an orbit_mq Plugin class")
    return cls


def load_plugins(names: list[str]) -> list[type[Plugin]]:
    """The plugin classes for `names`, in order; unknown names fail before anything starts."""
    unknown = sorted(set(names) - set(known_plugins()))
    if unknown:
        known = ", ".join(sorted(known_plugins())) or "none"
        raise ConfigError(f"unknown plugin(s) {', '.join(unknown)}; known plugins: {known}")
    return [load_plugin(name) for name in dict.fromkeys(names)]


def available_plugins() -> list[type[Plugin]]:
    """Every installed plugin that can work on this host, by name (broken ones are skipped)."""
    available: list[type[Plugin]] = []
    for name, entry in sorted(known_plugins().items()):
        try:
            cls = _load(entry)
        except ConfigError as exc:
            log.warning("not serving plugin %s: %s", name, exc)
            continue
        if cls.is_available():
            available.append(cls)
        else:
            log.info("not serving plugin %s: not available on this host", name)
    return available
