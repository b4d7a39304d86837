"""schemas/ and docs/protocol.md stay in step with the code.

* the committed files in schemas/ are exactly what `build_schemas()` produces now;
* every ```json example in docs/protocol.md is tagged `<!-- schema: NAME -->` and validates
  against schemas/NAME.json (with `jsonschema` where installed) and against the pydantic model;
* the error codes of schemas/error.json and of the doc's table are the `ErrorCode` enum.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import TypeAdapter

from orbit_mq import protocol
from orbit_mq.protocol import ErrorCode
from orbit_mq.schemas import (
    ASYNCAPI_FILE,
    build_schemas,
    generated_files,
    render_schemas,
    write_schemas,
)

REPO = Path(__file__).resolve().parent.parent
SCHEMAS = REPO / "schemas"
DOC = REPO / "docs" / "protocol.md"
REGENERATE = "run `orbit-mq schemas` (or `python -m orbit_mq.schemas schemas`) and commit schemas/"

try:
    import jsonschema  # type: ignore[import-untyped, import-not-found, unused-ignore]
except ImportError:  # pragma: no cover - the pydantic models still check every example
    jsonschema = None

TAGGED = re.compile(r"<!--\s*schema:\s*([\w-]+)\s*-->\s*\n```json\n(.*?)\n```", re.DOTALL)
JSON_FENCE = re.compile(r"^```json$", re.MULTILINE)


def _doc() -> str:
    return DOC.read_text(encoding="utf-8")


def _examples() -> list[tuple[str, str]]:
    return TAGGED.findall(_doc())


def _model(name: str) -> TypeAdapter[Any]:
    if name == "reply":
        return TypeAdapter(protocol.Reply)
    return TypeAdapter(protocol.WIRE_MODELS[name])


def _schema(name: str) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((SCHEMAS / f"{name}.json").read_text(encoding="utf-8"))
    return loaded


def test_schema_files_are_up_to_date() -> None:
    expected = render_schemas()
    on_disk = {
        path.relative_to(SCHEMAS).as_posix(): path.read_text(encoding="utf-8")
        for path in generated_files(SCHEMAS)
    }
    stale = sorted(
        name for name in expected.keys() | on_disk.keys() if expected.get(name) != on_disk.get(name)
    )
    assert not stale, f"schemas/ is out of date ({', '.join(stale)}): {REGENERATE}"


def test_write_schemas_writes_everything_and_drops_stale_files(tmp_path: Path) -> None:
    (tmp_path / "plugins").mkdir()
    (tmp_path / "plugins" / "gone.json").write_text("{}")
    (tmp_path / "README.md").write_text("kept: not a generated file")
    written = write_schemas(tmp_path)
    rendered = render_schemas()
    assert sorted(p.relative_to(tmp_path).as_posix() for p in written) == sorted(rendered)
    assert not (tmp_path / "plugins" / "gone.json").exists()
    assert (tmp_path / "README.md").exists()
    for name, text in rendered.items():
        assert (tmp_path / name).read_text(encoding="utf-8") == text
    assert render_schemas() == rendered  # deterministic


def test_every_wire_model_has_a_schema_with_id_and_title() -> None:
    files = build_schemas()
    for name in [*protocol.WIRE_MODELS, "reply"]:
        schema = files[f"{name}.json"]
        assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
        assert schema["$id"].endswith(f"/{name}.json")
        assert schema["title"]
        if jsonschema is not None:
            jsonschema.Draft202012Validator.check_schema(schema)


def test_plugin_files_describe_every_method() -> None:
    plugins = {n: c for n, c in build_schemas().items() if n.startswith("plugins/")}
    assert "plugins/sysinfo.json" in plugins
    for content in plugins.values():
        methods = {m["name"]: m for m in content["methods"]}
        assert {"register_session", "unregister_session", "health", "describe"} <= set(methods)
        for method in methods.values():
            assert method["params"]["type"] == "object"
            if jsonschema is not None:
                jsonschema.Draft202012Validator.check_schema(method["params"])
                jsonschema.Draft202012Validator.check_schema(method["result"])


def test_every_json_example_in_the_doc_is_tagged_and_every_message_has_one() -> None:
    tagged = _examples()
    assert len(JSON_FENCE.findall(_doc())) == len(tagged), (
        "every ```json block in docs/protocol.md needs a `<!-- schema: NAME -->` line before it"
    )
    assert {name for name, _ in tagged} >= {*protocol.WIRE_MODELS, "reply"}


@pytest.mark.parametrize(("name", "text"), _examples(), ids=lambda v: str(v)[:20])
def test_doc_example_validates(name: str, text: str) -> None:
    assert (SCHEMAS / f"{name}.json").exists(), f"<!-- schema: {name} --> names no schema"
    example = json.loads(text)
    if jsonschema is not None:
        validator = jsonschema.Draft202012Validator(
            _schema(name), format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER
        )
        errors = [
            f"{'/'.join(map(str, e.path))}: {e.message}" for e in validator.iter_errors(example)
        ]
        assert not errors, f"docs/protocol.md example for {name}: {errors}"
    _model(name).validate_python(example)


def test_error_codes_are_the_closed_set() -> None:
    codes = [code.value for code in ErrorCode]
    assert _schema("error")["$defs"]["ErrorCode"]["enum"] == codes
    errors = _doc().split("## 6. Errors", 1)[1].split("\n## ", 1)[0]
    documented = re.findall(r"^\| `([a-z_]+)` \|", errors, re.MULTILINE)
    assert documented == codes, "the error table in docs/protocol.md must list ErrorCode in order"


def test_asyncapi_uses_the_protocol_names_and_its_references_resolve() -> None:
    document = yaml.safe_load((SCHEMAS / ASYNCAPI_FILE).read_text(encoding="utf-8"))
    assert document["asyncapi"].startswith("3.")
    assert document["info"]["version"] == protocol.PROTOCOL_VERSION
    exchanges = {
        channel["bindings"]["amqp"]["exchange"]["name"]: channel["bindings"]["amqp"]["exchange"]
        for channel in document["channels"].values()
        if channel["bindings"]["amqp"]["is"] == "routingKey"
    }
    assert {name: e["type"] for name, e in exchanges.items()} == {
        protocol.RPC_EXCHANGE: "direct",
        protocol.EVENTS_EXCHANGE: "topic",
        protocol.TOPOLOGY_EXCHANGE: "topic",
    }
    addresses = {channel["address"] for channel in document["channels"].values()}
    assert {protocol.REPLY_TO, protocol.DISCOVER_KEY, protocol.DEAD_LETTER_QUEUE} <= addresses
    headers = document["components"]["messages"]["request"]["headers"]["properties"]
    assert set(headers) == {
        protocol.HEADER_PROTOCOL,
        protocol.HEADER_SESSION,
        protocol.HEADER_DEADLINE,
    }

    def refs(node: Any) -> list[str]:
        if isinstance(node, dict):
            own = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
            return own + [ref for value in node.values() for ref in refs(value)]
        if isinstance(node, list):
            return [ref for value in node for ref in refs(value)]
        return []

    for ref in refs(document):
        file, _, pointer = ref.partition("#")
        target: Any = document
        if file:
            assert (SCHEMAS / file).is_file(), ref
            target = json.loads((SCHEMAS / file).read_text(encoding="utf-8"))
        for part in filter(None, pointer.split("/")):
            target = target[part]


def test_every_event_topic_has_a_schema_and_job_status_lists_its_terminal_states() -> None:
    from orbit_mq.contracts.psij.models import TERMINAL
    from orbit_mq.workers.plugin import Plugin
    from orbit_mq.workers.registry import known_plugins, load_plugin

    files = build_schemas()
    for cls in (load_plugin(entry) for entry in known_plugins()):
        for topic in cls.events:
            name = topic if topic in Plugin.events else f"{cls.name}.{topic}"
            schema = files[f"events/{name}.json"]
            assert schema["properties"]["topic"]["const"] == topic
            if jsonschema is not None:
                jsonschema.Draft202012Validator.check_schema(schema)
    data = files["events/psij.job_status.json"]["$defs"]["JobStatusEvent"]
    assert data["x-terminal-states"] == sorted(state.value for state in TERMINAL)
    asyncapi = (SCHEMAS / ASYNCAPI_FILE).read_text(encoding="utf-8")
    for name in (name for name in files if name.startswith("events/")):
        assert f"$ref: {name}" in asyncapi, f"{ASYNCAPI_FILE} does not refer to {name}"


PYDANTIC_ONLY_KEYWORDS = {"gt", "ge", "lt", "le", "min_length", "max_length", "multiple_of"}


def _keywords(node: Any, path: str = "") -> list[tuple[str, str]]:
    """(path, key) of every key of every schema object below `node`; names of properties and
    definitions are names, not keywords, and are skipped."""
    found: list[tuple[str, str]] = []
    if isinstance(node, dict):
        for key, value in node.items():
            named = key in ("properties", "$defs", "patternProperties") and isinstance(value, dict)
            found.append((path, key))
            children = value.values() if named else [value]
            for child in children:
                found.extend(_keywords(child, f"{path}/{key}"))
    elif isinstance(node, list):
        for index, item in enumerate(node):
            found.extend(_keywords(item, f"{path}/{index}"))
    return found


def test_schemas_use_json_schema_keywords_only() -> None:
    # a constraint pydantic cannot express would be published under its own name ("gt")
    bad = [
        f"{file.relative_to(SCHEMAS)}{path}: {key}"
        for file in sorted(SCHEMAS.rglob("*.json"))
        for path, key in _keywords(json.loads(file.read_text(encoding="utf-8")))
        if key in PYDANTIC_ONLY_KEYWORDS
    ]
    assert not bad, bad
