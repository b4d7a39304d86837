"""One definition per operation: outside the contract modules, the SDK and the CLI spell no
psij state, no plugin method name and no result key; they use the contracts' models."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from pydantic import BaseModel

from orbit_mq.contract import Contract
from orbit_mq.contracts import installed_contracts
from orbit_mq.contracts.psij import JobState

REPO = Path(__file__).resolve().parent.parent
# The SDK and the CLI, without the contracts themselves and the modules that define the wire
# format (its fixed names, the reply envelope, error details, the generated schemas), and the
# bridge to rhapsody-py, whose task dicts have field names of their own.
WIRE_MODULES = {"protocol.py", "wire.py", "errors.py", "schemas.py", "rhapsody.py"}
CLI_COMMAND = re.compile(r"\.command\(")  # a command's name is the CLI's own vocabulary
SOURCES = sorted(
    path
    for path in [*(REPO / "orbit_mq").rglob("*.py"), *(REPO / "cli").glob("*.py")]
    if "contracts" not in path.parts and path.name not in WIRE_MODULES
)


def _fields(models: list[type[BaseModel]]) -> set[str]:
    """Every field of the models and of the models in them."""
    fields: set[str] = set()

    def collect(model: type[BaseModel]) -> None:
        for name, info in model.model_fields.items():
            if name not in fields:
                fields.add(name)
                annotation = info.annotation
                for candidate in (annotation, *getattr(annotation, "__args__", ())):
                    if isinstance(candidate, type) and issubclass(candidate, BaseModel):
                        collect(candidate)

    for model in models:
        collect(model)
    return fields


def _models(annotation: object) -> list[type[BaseModel]]:
    candidates = (annotation, *getattr(annotation, "__args__", ()))
    return [c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)]


def _result_fields() -> set[str]:
    """The fields of what contract methods return, except those that are also parameters
    (building a request, e.g. a job spec from CLI flags, is the CLI's own business)."""
    specs = [spec for c in installed_contracts() for spec in c.rpc_methods.values()]
    results = _fields([m for spec in specs for m in _models(spec.result._type)])
    params = _fields([spec.params for spec in specs])
    return results - params


def _own_methods() -> set[str]:
    return {
        name
        for contract in installed_contracts()
        for name in contract.rpc_methods
        if name not in Contract.rpc_methods
    }


def _hits(pattern: re.Pattern[str]) -> list[str]:
    return [
        f"{path.relative_to(REPO)}:{number}: {line.strip()}"
        for path in SOURCES
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if pattern.search(line) and not CLI_COMMAND.search(line)
    ]


def test_the_sources_are_found() -> None:
    assert len(SOURCES) > 20 and _result_fields() >= {"native_id", "exit_code", "received", "eof"}


@pytest.mark.parametrize(
    ("what", "pattern"),
    [
        ("a psij state", re.compile(rf"[\"']({'|'.join(JobState)})[\"']")),
        ("a plugin method name", re.compile(rf"[\"']({'|'.join(sorted(_own_methods()))})[\"']")),
        (
            "a result key",
            re.compile(rf"(\[|\.get\()[\"']({'|'.join(sorted(_result_fields()))})[\"']"),
        ),
    ],
)
def test_no_spelling_outside_the_contracts(what: str, pattern: re.Pattern[str]) -> None:
    assert not _hits(pattern), f"{what} spelt outside orbit_mq/contracts: {_hits(pattern)}"


def test_the_error_table_in_the_docs_lists_every_domain_error() -> None:
    doc = (REPO / "docs" / "architecture.md").read_text()
    table = doc[doc.index("| plugin | domain errors") : doc.index("`to_error_info`")]
    documented = set(re.findall(r"`(\w+)`", table))
    declared = {error.__name__ for contract in installed_contracts() for error in contract.errors}
    assert declared == documented, {
        "not in docs/architecture.md": sorted(declared - documented),
        "in the docs, declared by no contract": sorted(documented - declared),
    }


def test_no_asyncio_wait_for() -> None:
    """orbit_mq.waiting says why: on Python 3.11 it can lose a cancellation."""
    code = [*(REPO / "orbit_mq").rglob("*.py"), *(REPO / "workers").rglob("*.py")]
    hits = [
        f"{path.relative_to(REPO)}:{number}"
        for path in [*code, *(REPO / "cli").glob("*.py")]
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if "asyncio.wait_for(" in line
    ]
    assert not hits, f"asyncio.wait_for used (use orbit_mq.waiting.wait_within): {hits}"
