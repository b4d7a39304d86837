"""The `control` contract: the endpoint itself, served by every endpoint beside its plugins.

    control = await fabric.endpoint("hpc1").plugin(Control)
    await control.shutdown(drain=True)          # admins only (ORBIT_MQ_ADMIN_USERS)

A stop makes the endpoint stop taking requests at once: requests sent afterwards wait in their
queues for its next start, as they do for any offline endpoint. Calls in flight are finished,
`offline` is published and the endpoint process exits 0. Jobs and tasks keep running and are
re-attached by the next start, unless `drain` asked the endpoint to wait for them to end first
(their events keep flowing while it waits).
"""

from __future__ import annotations

from pydantic import BaseModel, Field, PositiveFloat

from orbit_mq.contract import Contract
from orbit_mq.rpc import rpc


class StopAccepted(BaseModel):
    endpoint: str = Field(description="The endpoint that is stopping.")
    requested_by: str = Field(description="The broker user who asked.")
    drain: bool = Field(description="Whether it waits for its running work to end first.")
    in_flight: int = Field(description="Calls being served when the stop began (besides this).")
    running: dict[str, int] = Field(
        description="Work still running, by plugin (jobs, tasks), that a drain waits for."
    )


class Control(Contract):
    name = "control"
    version = "1.0.0"

    @rpc
    async def shutdown(
        self, drain: bool = False, drain_timeout: PositiveFloat | None = None
    ) -> StopAccepted:
        """Stop the endpoint: no more requests taken (later ones wait for its next start),
        calls in flight finished, `offline` published, the process exits 0.

        With `drain`, it first waits until the work it runs (psij jobs, tasks) has ended, at
        most `drain_timeout` s (default: as long as the work runs); what still runs then is
        re-attached by the next start. Only the endpoint's admins may ask (its own broker user
        and ORBIT_MQ_ADMIN_USERS); others get `unauthorized`. The reply comes before the stop.
        """
        raise NotImplementedError


__all__ = ["Control", "StopAccepted"]
