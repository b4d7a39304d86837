"""One generic proxy for every plugin: `await proxy.method(**params)`.

When the plugin class is installed locally (its entry point), the proxy validates the
arguments against the `@rpc` signature before sending and parses the result into the
method's return type; otherwise it sends what it is given and returns plain JSON values.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Self

from pydantic import ValidationError

from orbit_mq.errors import InvalidRequest, SessionNotFound
from orbit_mq.jobs import job_handles

# Results that the SDK hands back as live handles rather than plain values.
HANDLES: dict[tuple[str, str], Callable[[PluginProxy, Any], Any]] = {
    ("psij", "submit_job"): job_handles,
    ("psij", "submit_jobs"): job_handles,
}

if TYPE_CHECKING:
    from orbit_mq.client import Fabric
    from orbit_mq.workers.rpc import RpcSpec

log = logging.getLogger("orbit_mq.client")

_SESSION_METHODS = frozenset({"register_session", "unregister_session"})


def local_specs(plugin: str) -> dict[str, RpcSpec]:
    """The `@rpc` specs of a plugin installed or imported here, or {} when it is unknown here."""
    from orbit_mq.workers.plugin import Plugin
    from orbit_mq.workers.registry import known_plugins, load_plugin

    if plugin in Plugin.loaded:
        return dict(Plugin.loaded[plugin].rpc_methods)
    if plugin not in known_plugins():
        return {}
    try:
        return dict(load_plugin(plugin).rpc_methods)
    except Exception as exc:  # a broken local install must not stop remote calls
        log.debug("plugin %s not usable locally: %s", plugin, exc)
        return {}


class PluginProxy:
    def __init__(
        self,
        fabric: Fabric,
        endpoint: str,
        plugin: str,
        wait: bool = False,
        timeout: float | None = None,
    ) -> None:
        self.fabric = fabric
        self.endpoint = endpoint
        self.plugin = plugin
        self.wait = wait
        self.timeout = timeout
        self.session_id: str | None = None
        self.session_ttl: float | None = None  # as asked for when the session was opened
        self.specs = local_specs(plugin)

    def __repr__(self) -> str:
        return f"<PluginProxy {self.endpoint}.{self.plugin} session={self.session_id}>"

    async def open_session(self, ttl: float | None = None) -> None:
        """Register a session; later calls carry it (and open a new one if it expired)."""
        self.session_id, self.session_ttl = None, ttl
        info = await self.call("register_session", {"ttl": ttl})
        self.session_id = info["session_id"] if isinstance(info, dict) else info.session_id

    async def close(self) -> None:
        """Unregister the session, if any."""
        if self.session_id is not None:
            session_id, self.session_id = self.session_id, None
            await self.call("unregister_session", {"session_id": session_id})

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *_: Any) -> None:
        await self.close()

    def __getattr__(self, method: str) -> Callable[..., Awaitable[Any]]:
        if method.startswith("_"):
            raise AttributeError(method)

        async def remote(*args: Any, **params: Any) -> Any:
            return await self._invoke(method, args, params, None)

        remote.__name__ = method
        return remote

    async def call(
        self, method: str, params: dict[str, Any] | None = None, /, *, timeout: float | None = None
    ) -> Any:
        """Call `method` with `params`; `timeout` overrides the proxy's (any parameter name,
        `timeout` included, is free for the method itself)."""
        return await self._invoke(method, (), dict(params or {}), timeout)

    async def _invoke(
        self, method: str, args: tuple[Any, ...], params: dict[str, Any], timeout: float | None
    ) -> Any:
        spec = self.specs.get(method)
        if spec is not None and (args or params):  # nothing to check in an empty call
            params = self._checked(spec, args, params)
        elif args:
            raise InvalidRequest(
                f"{self.plugin}.{method}: pass parameters by name (the plugin is not installed "
                "locally, so their order is unknown)"
            )
        try:
            result = await self._send(method, params, timeout, spec)
        except SessionNotFound:
            if self.session_id is None or method in _SESSION_METHODS:
                raise
            # The session expired (idle past its TTL) or the endpoint lost it. The endpoint
            # refused the call before running it, so making it again in a new one is safe.
            log.info("%s: session %s is gone; opening a new one", self, self.session_id)
            await self.open_session(self.session_ttl)
            result = await self._send(method, params, timeout, spec)
        if spec is not None:
            result = spec.result.validate_python(result)
        handle = HANDLES.get((self.plugin, method))
        return handle(self, result) if handle is not None else result

    async def _send(
        self, method: str, params: dict[str, Any], timeout: float | None, spec: RpcSpec | None
    ) -> Any:
        return await self.fabric.call(
            self.endpoint,
            self.plugin,
            method,
            params,
            timeout=self.timeout if timeout is None else timeout,
            wait=self.wait,
            session=self.session_id,
            retry=spec is not None and spec.dedupe,
        )

    def _checked(
        self, spec: RpcSpec, args: tuple[Any, ...], params: dict[str, Any]
    ) -> dict[str, Any]:
        names = list(spec.params.model_fields)
        if len(args) > len(names):
            raise InvalidRequest(f"{self.plugin}.{spec.name} takes at most {len(names)} arguments")
        params = {**dict(zip(names, args, strict=False)), **params}
        try:
            model = spec.params.model_validate(params)
        except ValidationError as exc:
            raise InvalidRequest(
                f"invalid parameters for {self.plugin}.{spec.name}: "
                + "; ".join(
                    f"{'.'.join(map(str, e['loc']))}: {e['msg']}"
                    for e in exc.errors(include_url=False)
                ),
            ) from None
        return model.model_dump(mode="json", exclude_unset=True)
