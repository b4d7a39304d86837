"""The `control` plugin (orbit_mq/contracts/control.py): the endpoint itself, served by every
endpoint. Stopping is for the endpoint's admins; the endpoint does the stopping."""

from __future__ import annotations

from pydantic import PositiveFloat

from orbit_mq.contracts.control import Control, StopAccepted
from orbit_mq.errors import Unauthorized
from orbit_mq.rpc import INJECTED, CallContext
from orbit_mq.workers.plugin import Plugin


class ControlPlugin(Plugin, Control):
    pooled = False  # stopping "any member" of a pool is never what is meant

    async def shutdown(
        self,
        drain: bool = False,
        drain_timeout: PositiveFloat | None = None,
        *,
        ctx: CallContext = INJECTED,
    ) -> StopAccepted:
        control = self.context.endpoint_control
        assert control is not None, "the endpoint serves the control plugin with its control"
        if ctx.user not in control.admins:
            self.context.ownership.audit(
                "refused",
                ctx.user,
                f"{ctx.plugin}.{ctx.method}",
                "endpoint",
                [self.context.endpoint],
            )
            raise Unauthorized(
                f"only the admins of endpoint {self.context.endpoint!r} may stop it "
                f"({', '.join(sorted(control.admins))}); its ORBIT_MQ_ADMIN_USERS names them",
                {"user": ctx.user},
            )
        reply = StopAccepted(
            endpoint=self.context.endpoint,
            requested_by=ctx.user,
            drain=drain,
            in_flight=control.in_flight() - 1,
            running=await control.running_work(),
        )
        self.context.ownership.audit(
            "stop", ctx.user, f"{ctx.plugin}.{ctx.method}", "endpoint", [self.context.endpoint]
        )
        control.request_stop(drain, drain_timeout, ctx.user)
        return reply
