"""Ownership: the work a call makes belongs to the user who called.

An endpoint may serve several users (ORBIT_MQ_ALLOWED_USERS). Their sessions and jobs belong
to the broker user whose request made them (the broker-validated `user_id`), and only that
user, or one of the endpoint's admins (ORBIT_MQ_ADMIN_USERS, by default the endpoint's own
user), may act on them.

The dispatcher makes the call it serves known to the code it runs (`serving`), so a plugin
method learns who calls from `current_call()` instead of every method taking the caller as a
parameter; `Ownership.check` decides whether the caller may act on the objects a call names.
Every decision that crosses users, a refusal, an admin acting on another user's work or a
remote stop, goes through `Ownership.audit`: the one place such decisions are recorded, in the
endpoint's log and as an audit event that only users granted all events can read.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field

from orbit_mq.errors import Unauthorized
from orbit_mq.protocol import AuditDecision as Decision
from orbit_mq.protocol import AuditRecord
from orbit_mq.rpc import CallContext
from orbit_mq.workers.logs import RefusalLog, bounded_logger

# A child of the endpoint's logger: its lines go wherever the endpoint's go, and an operator
# can still route them apart.
audit_log = bounded_logger("orbit_mq.endpoint.audit")
_refusals = RefusalLog(audit_log)  # a caller cannot flood the log with refused calls

_CALL: ContextVar[CallContext] = ContextVar("orbit_mq_call")

Auditor = Callable[[AuditRecord], None]  # sends an audit event (the endpoint's outbox)
_SHOWN = 20  # object ids named in one audit line


@contextmanager
def serving(call: CallContext) -> Iterator[None]:
    """Make `call` the current call of the code run inside (tasks and threads it starts with
    a copy of the context see it too)."""
    token = _CALL.set(call)
    try:
        yield
    finally:
        _CALL.reset(token)


def current_call() -> CallContext:
    """The call being served, as the dispatcher set it."""
    try:
        return _CALL.get()
    except LookupError:
        raise RuntimeError(
            "no call is being served here: current_call() works only inside a method the "
            "dispatcher runs"
        ) from None


def audit_record(
    decision: Decision, user: str, method: str, kind: str, ids: Collection[str], owners: set[str]
) -> AuditRecord | None:
    """Log that `user`'s call of `method` was refused, allowed as an admin's, or stopped the
    endpoint, on the `kind` objects `ids` of `owners`; the record, for the audit event, or
    None where a caller's flood of refusals is held back (the log says how many)."""
    shown = sorted(ids)
    named = ", ".join(shown[:_SHOWN]) + (
        f" and {len(shown) - _SHOWN} more" if len(shown) > _SHOWN else ""
    )
    whose = ", ".join(sorted(owners))
    what = {"refused": "refused", "admin_override": "admin override:", "stop": "stop:"}[decision]
    message = f"audit: {what} {method} by {user!r} on {kind} {named}".rstrip()
    message += f" of {whose}" if whose else ""
    if decision == "refused":
        if not _refusals.warning(user, "%s", message):
            return None
    else:
        audit_log.info("%s", message)
    return AuditRecord(
        decision=decision, user=user, method=method, kind=kind, ids=shown[:_SHOWN],
        owners=sorted(owners), message=message,
    )  # fmt: skip


@dataclass(frozen=True)
class Ownership:
    """Who may act on whose work on one endpoint."""

    endpoint_user: str = ""  # owns work recorded without an owner
    admins: frozenset[str] = field(default_factory=frozenset)
    auditor: Auditor | None = None

    def audit(
        self,
        decision: Decision,
        user: str,
        method: str,
        kind: str,
        ids: Collection[str] = (),
        owners: Collection[str] = (),
    ) -> None:
        """Record a decision that crossed users (see `audit_record`) and send its event."""
        record = audit_record(decision, user, method, kind, ids, set(owners))
        if record is not None and self.auditor is not None:
            self.auditor(record)

    def owner(self, recorded: str | None) -> str:
        """The owner of work whose journal row says `recorded`: work recorded without one is
        the endpoint's own user's (so only that user and the admins see it)."""
        return recorded or self.endpoint_user

    def check(
        self,
        owners: Mapping[str, str | None],
        refusal: type[Unauthorized],
        kind: str,
        key: str,
    ) -> None:
        """Let the current caller act on the `kind` objects `owners` maps (id → recorded
        owner): their own always, anyone's if they are an admin (audited); otherwise raise
        `refusal` (audited), naming the first foreign object under `key` in its details."""
        call = current_call()
        foreign = {
            object_id: self.owner(recorded)
            for object_id, recorded in owners.items()
            if self.owner(recorded) != call.user
        }
        if not foreign:
            return
        method = f"{call.plugin}.{call.method}"
        decision: Decision = "admin_override" if call.user in self.admins else "refused"
        self.audit(decision, call.user, method, kind, foreign, set(foreign.values()))
        if decision == "admin_override":
            return
        first = sorted(foreign)[0]
        raise refusal(
            f"{kind} {first} belongs to another user: only its owner or an admin of endpoint "
            f"{call.endpoint!r} may use it",
            {key: first},
        )

    def visible_owners(self) -> frozenset[str] | None:
        """The recorded owners whose work the current caller may list: None (everyone's) for
        an admin; for anyone else their own, and work without an owner if they are the
        endpoint's own user."""
        user = current_call().user
        if user in self.admins:
            return None
        return frozenset({user, ""}) if user == self.endpoint_user else frozenset({user})
