"""Webhooks through the gateway (`orbit_mq.webhooks` delivers them):

    POST /api/v1/endpoints/{endpoint}/jobs/{job_id}/webhook   {"url": …, "secret": …}
    GET  /api/v1/webhooks                                      the caller's, with their state

The gateway, not the endpoint, posts every state change of the job to `url`, signed with
`secret` (which is never shown again). Registering checks that the caller may see the job;
its transitions from before the registration are sent too. Task batches' routes:
orbit_mq/web/taskhooks.py; the list has both.
"""

from __future__ import annotations

import logging
from pathlib import Path

from pydantic import BaseModel, Field, ValidationError
from starlette.requests import Request
from starlette.responses import Response

from orbit_mq.client import Fabric
from orbit_mq.config import Settings
from orbit_mq.contracts.psij import PsiJ
from orbit_mq.errors import OrbitError, Unavailable, invalid_params
from orbit_mq.web.identity import Connection
from orbit_mq.web.routes import JSON, json_body, name_of
from orbit_mq.webhooks import Webhooks, WebhookStore

log = logging.getLogger("orbit_mq.web")


class WebhookRequest(BaseModel):
    url: str = Field(pattern=r"^https?://[^\s]+$", description="Where to POST each change.")
    secret: str = Field(min_length=16, max_length=512, description="The HMAC-SHA256 key.")


class Deliveries:
    """The gateway's webhook deliverer, on a connection of its own (settings' user, which
    needs all events), or the reason there is none."""

    def __init__(self) -> None:
        self.webhooks: Webhooks | None = None
        self.off = "the gateway has not started yet"

    async def start(self, settings: Settings, subscription: str) -> None:
        fabric = Fabric(settings)
        try:
            await fabric.open()
            store = WebhookStore(Path(settings.home) / "web" / "webhooks.db")
            self.webhooks = Webhooks(fabric, store, subscription=subscription)
            await self.webhooks.start()
        except OrbitError as exc:
            self.webhooks, self.off = None, f"webhooks are off: {exc}"
            log.warning("%s (the gateway's own broker user needs all events)", self.off)
            await fabric.close()

    async def close(self) -> None:
        if self.webhooks is not None:
            await self.webhooks.close()
            self.webhooks.store.close()
            await self.webhooks.fabric.close()

    def running(self) -> Webhooks:
        if self.webhooks is None:
            raise Unavailable(self.off)
        return self.webhooks


async def register(request: Request, user: Connection) -> Response:
    endpoint, job_id = name_of(request, "endpoint"), str(request.path_params["job_id"])
    try:
        hook = WebhookRequest.model_validate(await json_body(request))
    except ValidationError as exc:
        raise invalid_params("webhook", exc) from None
    webhooks = request.app.state.deliveries.running()
    psij = await user.fabric.endpoint(endpoint).plugin(PsiJ, session=False)
    await psij.get_job_status(job_id)  # the caller's own job (or an admin's view of it)
    webhooks.register(job_id, endpoint, user.fabric.user, hook.url, hook.secret)
    info = webhooks.info(job_id)
    assert info is not None  # registered just now
    return JSON(info.model_dump(mode="json"))


async def list_hooks(request: Request, user: Connection) -> Response:
    webhooks = request.app.state.deliveries.running()
    return JSON([info.model_dump(mode="json") for info in webhooks.infos(user.fabric.user)])
