"""What the webhook tests share: a receiver on 127.0.0.1 recording every POST (stopped and
started on one port, to be the receiver that is down for a while), the webhooks' secret, and
the deletion of a durable subscription's queue a test made."""

from __future__ import annotations

import asyncio
import http.server
import json
import threading
import uuid
from collections.abc import Callable
from typing import Any

import aiormq

SECRET = "s3cret-" + uuid.uuid4().hex
WITHIN = 60.0  # s for any awaited delivery


class Receiver:
    """An HTTP server on 127.0.0.1 recording every POST; stopped and started on one port."""

    def __init__(self) -> None:
        self.posts: list[tuple[dict[str, str], bytes]] = []
        self.port = 0
        self._server: http.server.ThreadingHTTPServer | None = None
        self._changed = threading.Condition()

    def start(self) -> None:
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["content-length"]))
                with receiver._changed:
                    receiver.posts.append(({k.lower(): v for k, v in self.headers.items()}, body))
                    receiver._changed.notify_all()
                self.send_response(204)
                self.end_headers()

            def log_message(self, *_: Any) -> None:
                pass

        http.server.ThreadingHTTPServer.allow_reuse_address = True
        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.port = self._server.server_address[1]
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    def states(self) -> list[str]:
        return [json.loads(body)["state"] for _, body in self.posts]

    async def until(self, state: str) -> None:
        """Until a POST of `state` arrived (bounded by WITHIN)."""
        arrived = await self.wait_for(lambda: state in self.states())
        assert arrived, f"no {state} POST within {WITHIN} s: {self.states()}"

    async def wait_for(self, done: Callable[[], bool]) -> bool:
        """Whether `done()` held within WITHIN s (checked after each POST)."""

        def wait() -> bool:
            with self._changed:
                return self._changed.wait_for(done, WITHIN)

        return await asyncio.to_thread(wait)


async def delete_queue(url: str, queue: str) -> None:
    connection = await aiormq.connect(url.split(",")[0])
    channel = await connection.channel()
    await channel.queue_delete(queue)
    await connection.close()
