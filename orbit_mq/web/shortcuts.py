"""The psij conveniences (`/endpoints/{endpoint}/jobs…`): each one a route onto one psij
method, called through the same generic path as any method. Names come from the contract's
method objects (`PsiJ.submit_job`), never spelt again, and the parameters are checked with
the method's own model before anything is sent.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from orbit_mq.contract import Contract
from orbit_mq.contracts.psij import PsiJ
from orbit_mq.errors import invalid_params
from orbit_mq.rpc import RpcSpec


def spec_of(contract: type[Contract], method: Callable[..., Any]) -> RpcSpec:
    """The wire spec of one of `contract`'s methods, given the method object itself."""
    for spec in contract.rpc_methods.values():
        if spec.attr == method.__name__:
            return spec
    raise LookupError(f"{method.__qualname__} is not a remote method of {contract.__name__}")


@dataclass(frozen=True)
class Shortcut:
    """`verb /endpoints/{endpoint}{path}` calls `spec`: path parameters and the query string
    fill its parameters (`renamed`: query name → parameter), and so does the JSON body when
    `body` names the parameter it is."""

    verb: str
    path: str
    contract: type[Contract]
    spec: RpcSpec
    summary: str
    body: str | None = None
    renamed: Mapping[str, str] = field(default_factory=dict)

    @property
    def plugin(self) -> str:
        return self.contract.name

    @property
    def operation_id(self) -> str:
        words = self.path.replace("{", "").replace("}", "").strip("/").split("/")
        return ".".join([self.plugin, self.verb.lower(), *words])

    def path_names(self) -> list[str]:
        return [part[1:-1] for part in self.path.split("/") if part.startswith("{")]

    def query_names(self) -> list[str]:
        """The parameters the query string may give, under their query names."""
        taken = {*self.path_names(), *([self.body] if self.body else [])}
        back = {target: name for name, target in self.renamed.items()}
        return [back.get(p, p) for p in self.spec.params.model_fields if p not in taken]

    def params(
        self, path: Mapping[str, str], query: Mapping[str, str], body: Any | None
    ) -> dict[str, Any]:
        """The method's parameters, checked with its model (InvalidRequest as the endpoint
        words it), as JSON with the endpoint's defaults left to it."""
        given: dict[str, Any] = {name: path[name] for name in self.path_names()}
        for name in self.query_names():
            if name in query:
                given[self.renamed.get(name, name)] = query[name]
        if self.body is not None:
            given[self.body] = body
        try:
            model = self.spec.params.model_validate(given)
        except ValidationError as exc:
            raise invalid_params(f"{self.plugin}.{self.spec.name}", exc) from None
        dumped: dict[str, Any] = model.model_dump(mode="json", exclude_unset=True)
        return dumped


SUBMIT, LIST, STATUS, CANCEL = (
    spec_of(PsiJ, method)
    for method in (PsiJ.submit_job, PsiJ.list_jobs, PsiJ.get_job_status, PsiJ.cancel_job)
)
SHORTCUTS: tuple[Shortcut, ...] = (
    Shortcut("POST", "/jobs", PsiJ, SUBMIT, "Submit a job (the body is its JobSpec)", "spec"),
    Shortcut("GET", "/jobs", PsiJ, LIST, "The caller's jobs, newest first"),
    Shortcut("GET", "/jobs/{job_id}", PsiJ, STATUS, "A job's status, history and output"),
    Shortcut(
        "GET",
        "/jobs/{job_id}/output",
        PsiJ,
        STATUS,
        "A job's output from byte offsets (`offset`: stdout's; pass back the returned ones)",
        renamed={"offset": "stdout_offset"},
    ),
    Shortcut("POST", "/jobs/{job_id}/cancel", PsiJ, CANCEL, "Cancel a job"),
)
