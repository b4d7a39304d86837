"""The published contract, generated from code: JSON Schemas, plugin descriptions, AsyncAPI.

`write_schemas(Path("schemas"))` (`orbit-mq schemas`, or `python -m orbit_mq.schemas [DIR]`)
writes `<name>.json`, a JSON Schema (draft 2020-12) per model in `protocol.WIRE_MODELS` plus
`reply.json`; `plugins/<plugin>.json`, the `describe` answer of each installed plugin (every
method's parameter and result schemas); and `asyncapi.yaml` (AsyncAPI 3.0, built by
`orbit_mq.asyncapi`), the exchanges, keys, properties and headers. Names come from
`orbit_mq.protocol`; the output is deterministic, and tests/test_schemas.py fails when the
committed files are stale.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, TypeAdapter, create_model

from orbit_mq import protocol as p
from orbit_mq.asyncapi import EVENTS_DIR, PLUGINS_DIR, asyncapi_document
from orbit_mq.contract import Contract
from orbit_mq.contracts import installed_contracts

DIALECT = "https://json-schema.org/draft/2020-12/schema"
BASE_URI = "https://orbit-mq.dev/schemas/"
ASYNCAPI_FILE = "asyncapi.yaml"


# -- JSON Schemas ------------------------------------------------------------------------------


def _schema(name: str, schema: dict[str, Any], title: str | None = None) -> dict[str, Any]:
    out = {"$schema": DIALECT, "$id": f"{BASE_URI}{name}.json", **schema}
    out["title"] = title or out.get("title") or name
    return out


def message_schemas() -> dict[str, dict[str, Any]]:
    """`<name>.json` → schema, for every wire model and the reply union."""
    schemas = {
        f"{name}.json": _schema(name, model.model_json_schema())
        for name, model in p.WIRE_MODELS.items()
    }
    reply = TypeAdapter(p.Reply).json_schema()
    reply["description"] = (
        "The body of every reply to a plain request: `ok` tells success from failure."
    )
    schemas["reply.json"] = _schema("reply", reply, "Reply")
    return schemas


def plugin_descriptions() -> dict[str, dict[str, Any]]:
    """`plugins/<plugin>.json` → the `describe` answer of every installed plugin."""
    described = [cls.description() for cls in _installed()]
    return {
        f"{PLUGINS_DIR}/{d.name}.json": d.model_dump(mode="json")
        for d in sorted(described, key=lambda d: d.name)
    }


def _installed() -> list[type[Contract]]:
    return installed_contracts()


def _event_model(topic: str, plugin: str | None, data: type[BaseModel]) -> type[BaseModel]:
    """The whole event message of one topic: the envelope with its `data` model."""
    fields: dict[str, Any] = {"topic": (Literal[topic], ...), "data": (data, ...)}
    if plugin is not None:
        fields["plugin"] = (Literal[plugin], ...)
    title = "".join(part.title() for part in f"{plugin or ''}_{topic}".split("_")) + "Event"
    model: type[BaseModel] = create_model(title, __base__=p.Event, **fields)
    return model


def event_schemas() -> dict[str, dict[str, Any]]:
    """`events/<topic>.json` for the topics every plugin has (session_status), and
    `events/<plugin>.<topic>.json` for each installed plugin's own."""
    schemas: dict[str, dict[str, Any]] = {}
    for topic, data in Contract.events.items():
        name = f"{EVENTS_DIR}/{topic}"
        schemas[f"{name}.json"] = _schema(name, _event_model(topic, None, data).model_json_schema())
    for cls in _installed():
        for topic, data in cls.events.items():
            if topic in Contract.events:
                continue
            name = f"{EVENTS_DIR}/{cls.name}.{topic}"
            model = _event_model(topic, cls.name, data)
            schemas[f"{name}.json"] = _schema(name, model.model_json_schema())
    return schemas


# -- files -------------------------------------------------------------------------------------


def build_schemas() -> dict[str, Any]:
    """Relative file name → content (a JSON-able object) of everything in schemas/."""
    files: dict[str, Any] = {**message_schemas()}
    plugins = plugin_descriptions()
    files.update(plugins)
    events = event_schemas()
    files.update(events)
    names = [content["name"] for content in plugins.values()]
    files[ASYNCAPI_FILE] = asyncapi_document(names, sorted(events))
    return dict(sorted(files.items()))


class _Dumper(yaml.SafeDumper):
    def ignore_aliases(self, data: Any) -> bool:
        return True  # spelled out in full: no &id001 anchors


def render(name: str, content: Any) -> str:
    """The exact text of one file: JSON with sorted keys, or YAML in the order built."""
    if name.endswith((".yaml", ".yml")):
        return yaml.dump(content, Dumper=_Dumper, sort_keys=False, allow_unicode=True, width=100)
    return json.dumps(content, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def render_schemas() -> dict[str, str]:
    return {name: render(name, content) for name, content in build_schemas().items()}


def generated_files(out: Path) -> list[Path]:
    """The files in `out` that this module wrote: every plugin description in its own
    `plugins/` folder, and top-level files that carry our `$id` or AsyncAPI id."""
    owned = [*out.glob(f"{PLUGINS_DIR}/*.json"), *out.glob(f"{EVENTS_DIR}/*.json")]
    for path in [*out.glob("*.json"), *out.glob("*.yaml")]:
        try:
            head = path.read_text(encoding="utf-8")[:4096]
        except (OSError, UnicodeDecodeError):
            continue
        if BASE_URI in head or "urn:orbit-mq:protocol" in head:
            owned.append(path)
    return sorted(owned)


def write_schemas(out: Path) -> list[Path]:
    """Write every schema file under `out`, drop stale generated ones; the paths written."""
    rendered = render_schemas()
    for stale in generated_files(out):
        if stale.relative_to(out).as_posix() not in rendered:
            stale.unlink()
    written = []
    for name, text in rendered.items():
        path = out / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.exists() or path.read_text(encoding="utf-8") != text:
            path.write_text(text, encoding="utf-8")
        written.append(path)
    return written


if __name__ == "__main__":
    target = Path(sys.argv[1] if len(sys.argv) > 1 else "schemas")
    for path in write_schemas(target):
        print(path)
