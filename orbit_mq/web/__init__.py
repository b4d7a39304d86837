"""The HTTP API gateway (`orbit-mq web`): endpoints, plugin calls, psij jobs and events over
HTTP, each request made as the broker user who logged in. See docs/explorer.md.

    app = create_app(Settings(url="amqp://127.0.0.1:5672/"))   # an ASGI app, e.g. for uvicorn
"""

from orbit_mq.web.app import create_app
from orbit_mq.web.openapi import openapi_document

__all__ = ["create_app", "openapi_document"]
