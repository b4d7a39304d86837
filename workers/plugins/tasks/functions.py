"""What runs inside a worker process: Python function tasks, a chunk at a time.

A chunk is a list of `Call` tuples (cheap to pickle across the process boundary); each call
resolves its function (import path or cloudpickle, both cached), runs it with its stdout and
stderr captured, under its timeout (SIGALRM: the worker runs calls in its main thread), and
answers an `Outcome` tuple with the encoded result or the error.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import signal
import traceback
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, NamedTuple

from orbit_mq.contracts.tasks.models import TASK_TAIL
from orbit_mq.contracts.tasks.values import encode_value, unpickled

CACHE = 1024  # resolved functions kept per worker


class Call(NamedTuple):
    id: int
    function: str | None
    pickled_function: str | None
    args: list[Any]
    kwargs: dict[str, Any]
    pickled_arguments: str | None
    timeout: float | None


class Outcome(NamedTuple):
    id: int
    ok: bool
    encoding: str | None = None
    data: bytes | None = None
    error: str | None = None
    exception: str | None = None
    stdout: str = ""
    stderr: str = ""
    exit_code: int | None = None


class TaskTimeout(Exception):
    """The call ran past its task's timeout."""


_functions: OrderedDict[str, Callable[..., Any]] = OrderedDict()


def resolve(path: str | None, pickled: str | None) -> Callable[..., Any]:
    key = path if path is not None else f"pickle:{pickled}"
    func = _functions.get(key)
    if func is None:
        func = _import(path) if path is not None else unpickled(pickled or "")
        if not callable(func):
            raise TypeError(f"{path or 'the pickled function'} is not callable")
        _functions[key] = func
        if len(_functions) > CACHE:
            _functions.popitem(last=False)
    return func


def _import(path: str) -> Callable[..., Any]:
    module_name, _, qualname = path.partition(":")
    target: Any = importlib.import_module(module_name)
    for part in qualname.split("."):
        target = getattr(target, part)
    return target  # type: ignore[no-any-return]


def _on_alarm(signum: int, frame: Any) -> None:
    raise TaskTimeout


def tail(text: str, size: int = TASK_TAIL) -> str:
    return text[-size:]


def run_call(call: Call) -> Outcome:
    out, err = io.StringIO(), io.StringIO()
    try:
        func = resolve(call.function, call.pickled_function)
        if call.pickled_arguments is not None:
            args, kwargs = unpickled(call.pickled_arguments)
        else:
            args, kwargs = call.args, call.kwargs
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), _limit(call):
            value = func(*args, **kwargs)
        encoding, data = encode_value(value)
    except TaskTimeout:
        return Outcome(
            call.id,
            False,
            error=f"timed out after {call.timeout} s",
            stdout=tail(out.getvalue()),
            stderr=tail(err.getvalue()),
        )
    except BaseException as exc:  # the task's failure, whatever it is, is its outcome
        return Outcome(
            call.id,
            False,
            error=f"{type(exc).__name__}: {exc}"[:TASK_TAIL],
            exception=tail(traceback.format_exc()),
            stdout=tail(out.getvalue()),
            stderr=tail(err.getvalue()),
        )
    return Outcome(
        call.id, True, encoding, data, None, None, tail(out.getvalue()), tail(err.getvalue())
    )


@contextlib.contextmanager
def _limit(call: Call) -> Any:
    if not call.timeout:
        yield
        return
    previous = signal.signal(signal.SIGALRM, _on_alarm)
    signal.setitimer(signal.ITIMER_REAL, call.timeout)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def run_chunk(calls: list[Call]) -> list[Outcome]:
    """Run `calls` one after the other (in a worker process)."""
    return [run_call(call) for call in calls]
