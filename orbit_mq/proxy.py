"""Plugin proxies: `await proxy.method(**params)`.

A proxy for a contract (`endpoint.plugin(PsiJ)`) is typed as that contract: its methods take
the contract's parameters (checked before anything is sent) and return its models, whatever
is installed on the client. Results that are handles (`Job`) are bound to the proxy. A proxy
for a plugin no contract describes here (`endpoint.plugin("name")`) sends what it is given
and returns plain JSON values.

`remote(proxy)` is the proxy itself as a `PluginProxy` (its session, `call`, `close`).
"""

from __future__ import annotations

import asyncio
import copy
import functools
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Self, TypeVar, cast

from pydantic import ValidationError

from orbit_mq.contract import Contract
from orbit_mq.errors import (
    ConfigError,
    EndpointOffline,
    InvalidArguments,
    NotFound,
    RemoteError,
    SessionNotFound,
)
from orbit_mq.protocol import SessionInfo
from orbit_mq.rpc import RpcSpec

if TYPE_CHECKING:
    from orbit_mq.client import Fabric

log = logging.getLogger("orbit_mq.client")

C = TypeVar("C")
_SESSION_METHODS = frozenset({"register_session", "unregister_session"})


class PluginProxy:
    """Calls to one plugin of one endpoint, with the caller's session."""

    contract: type[Contract] | None = None  # set on the classes `proxy_class` makes

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
        # The pool member holding the session, when `endpoint` is a pool: calls go there.
        self.member: str | None = None
        self.session_ttl: float | None = None  # as asked for when the session was opened
        self.message_id: str | None = None  # for every call: see `with_options`
        # Without a contract still the methods every plugin has (sessions, health, describe).
        self.specs: dict[str, RpcSpec] = (self.contract or Contract).rpc_methods

    @property
    def serving(self) -> str:
        """The endpoint that serves this proxy's calls, and so publishes their events: the
        pool member holding its session, else the endpoint it was made for."""
        return self.member or self.endpoint

    def __repr__(self) -> str:
        return f"<PluginProxy {self.endpoint}.{self.plugin} session={self.session_id}>"

    async def open_session(self, ttl: float | None = None) -> None:
        """Register a session; later calls carry it (and open a new one if it expired)."""
        self.session_id, self.session_ttl, self.member = None, ttl, None
        session: SessionInfo = await self.call("register_session", {"ttl": ttl})
        self.session_id = session.session_id
        if session.endpoint not in (None, self.endpoint):
            self.member = session.endpoint

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
        spec = self.specs.get(method)  # a wire name unlike the Python one (staging's list)
        if spec is not None:
            return functools.partial(_remote_method(spec), self)
        if self.contract is not None:
            methods = ", ".join(sorted(self.specs))
            raise AttributeError(f"plugin {self.plugin!r} has no method {method!r}: {methods}")

        async def remote(**params: Any) -> Any:
            return await self.call(method, params)

        remote.__name__ = method
        return remote

    async def call(
        self,
        method: str,
        params: dict[str, Any] | None = None,
        /,
        *,
        timeout: float | None = None,
        message_id: str | None = None,
        checked: bool = True,
    ) -> Any:
        """Call `method` with `params`: the one call path of every proxy. `timeout` overrides
        the proxy's; `message_id` repeats an earlier call's (to retry it). `checked=False`
        sends `params` as they are, already in their JSON form, and returns the result as JSON
        (bulk data such as staging chunks, which checking would only copy)."""
        spec = self.specs.get(method)
        params = dict(params or {})
        if spec is not None and checked and params:
            params = _checked(self.plugin, spec, (), params)
        return await self._calling(method, params, timeout, message_id, spec, parse=checked)

    async def _invoke(self, spec: RpcSpec, args: tuple[Any, ...], params: dict[str, Any]) -> Any:
        if args or params:
            params = _checked(self.plugin, spec, args, params)
        return await self._calling(spec.name, params, None, None, spec, parse=True)

    async def _calling(
        self,
        method: str,
        params: dict[str, Any],
        timeout: float | None,
        message_id: str | None,
        spec: RpcSpec | None,
        parse: bool,
    ) -> Any:
        holder: PluginProxy = self
        try:
            result = await self._send(method, params, timeout, message_id, spec)
        except (SessionNotFound, EndpointOffline) as error:
            if self.session_id is None or method in _SESSION_METHODS:
                raise
            if isinstance(error, EndpointOffline) and error.endpoint != self.member:
                raise
            # The session expired (idle past its TTL), the endpoint lost it, or the pool
            # member holding it is gone. The call was refused or never taken, so making it
            # again in a new session (through the pool: with another member) is safe.
            log.info("%s: session %s is gone (%s); opening a new one", self, self.session_id, error)
            await self.open_session(self.session_ttl)
            result = await self._send(method, params, timeout, None, spec)
        except NotFound as error:
            if "pool" not in error.details:
                raise
            holder, result = await self._elsewhere_in_pool(error, method, params, timeout, spec)
        if spec is None or not parse:
            return result
        value = spec.result.validate_python(result)
        _bind(value, holder)
        return value

    async def _elsewhere_in_pool(
        self,
        error: NotFound,
        method: str,
        params: dict[str, Any],
        timeout: float | None,
        spec: RpcSpec | None,
    ) -> tuple[PluginProxy, Any]:
        """Ask the pool's other members for what the one asked did not have (a job they
        submitted stays theirs): a proxy for the member that had it, and its answer. Handles in
        the answer (a `Job`) are bound to that proxy, so they go to their member directly."""
        pool, asked = error.details["pool"], error.details.get("member")
        members = [m for m in await self.fabric.pool_members(pool) if m != asked]
        proxies = [
            type(self)(self.fabric, member, self.plugin, self.wait, self.timeout)
            for member in members
        ]
        answers = await asyncio.gather(
            *(p._send(method, params, timeout, None, spec) for p in proxies),
            return_exceptions=True,
        )
        for proxy, answer in zip(proxies, answers, strict=True):
            if not isinstance(answer, BaseException):
                return proxy, answer
        for answer in answers:  # what a member had, but refused (another user's job)
            if isinstance(answer, RemoteError) and not isinstance(answer, NotFound):
                raise answer
        raise error

    async def _send(
        self,
        method: str,
        params: dict[str, Any],
        timeout: float | None,
        message_id: str | None,
        spec: RpcSpec | None,
    ) -> Any:
        return await self.fabric.call(
            self.serving,
            self.plugin,
            method,
            params,
            timeout=self.timeout if timeout is None else timeout,
            wait=self.wait,
            session=self.session_id,
            message_id=message_id or self.message_id,
            retry=spec is not None and spec.dedupe,
        )


def _checked(
    plugin: str, spec: RpcSpec, args: tuple[Any, ...], params: dict[str, Any]
) -> dict[str, Any]:
    """The parameters as the contract has them (JSON form), or InvalidArguments."""
    names = list(spec.params.model_fields)
    if len(args) > len(names):
        raise InvalidArguments(f"{plugin}.{spec.name} takes at most {len(names)} arguments")
    clash = sorted(set(names[: len(args)]) & params.keys())
    if clash:
        raise InvalidArguments(f"{plugin}.{spec.name} got {', '.join(clash)} twice")
    params = {**dict(zip(names, args, strict=False)), **params}
    try:
        model = spec.params.model_validate(params)
    except ValidationError as exc:
        raise InvalidArguments(
            f"invalid parameters for {plugin}.{spec.name}: "
            + "; ".join(
                f"{'.'.join(map(str, e['loc']))}: {e['msg']}"
                for e in exc.errors(include_url=False, include_input=False)
            ),
        ) from None
    return model.model_dump(mode="json", exclude_unset=True)


def _bind(value: Any, proxy: PluginProxy) -> None:
    """Tie handles in a result (`Job`, lists of them) to the proxy that returned them."""
    if isinstance(value, list | tuple):
        for item in value:
            _bind(item, proxy)
    elif hasattr(value, "bind") and not isinstance(value, type):
        value.bind(proxy)


def _remote_method(spec: RpcSpec) -> Callable[..., Awaitable[Any]]:
    async def remote(self: PluginProxy, *args: Any, **params: Any) -> Any:
        return await self._invoke(spec, args, params)

    remote.__name__ = remote.__qualname__ = spec.attr
    remote.__doc__ = spec.doc
    return remote


_classes: dict[type[Contract], type[PluginProxy]] = {}


def proxy_class(contract: type[Contract]) -> type[PluginProxy]:
    """The proxy class of a contract: a PluginProxy with every remote method of the contract
    (statically, `endpoint.plugin(C)` is a `C`)."""
    made = _classes.get(contract)
    if made is None:
        methods = {spec.attr: _remote_method(spec) for spec in contract.rpc_methods.values()}
        namespace = {"contract": contract, "__module__": __name__, **methods}
        made = _classes[contract] = type(f"{contract.__name__}Proxy", (PluginProxy,), namespace)
    return made


def with_options(proxy: C, *, timeout: float | None = None, message_id: str | None = None) -> C:
    """The same proxy on other terms, for the next call: its own `timeout`, and a `message_id`
    (to repeat an earlier call, e.g. a deduplicated commit whose reply was lost). It shares
    the session as it is now."""
    clone = copy.copy(remote(proxy))
    clone.timeout = clone.timeout if timeout is None else timeout
    clone.message_id = message_id
    return cast(C, clone)


def remote(proxy: object) -> PluginProxy:
    """A typed proxy (`endpoint.plugin(PsiJ)`) seen as the PluginProxy it is."""
    if not isinstance(proxy, PluginProxy):
        raise ConfigError(f"{proxy!r} is not a plugin proxy")
    return proxy
