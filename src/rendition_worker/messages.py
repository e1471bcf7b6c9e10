"""Poison messages: a task's arguments checked against its signature before it runs.

A message made by hand, by an older or newer publisher, or damaged on the way, either cannot
call the task (a missing or unknown argument) or calls it with values it cannot use (a
number for a name, an unknown model, a primary key of the wrong type). Either way retrying
cannot help, and a traceback per message helps nobody: the task logs one line that names
the problem, marks the message's outbox intent done (else the relay would publish it again,
forever) and returns `{"status": "rejected", "error": ...}`, which acknowledges the message.
"""

from __future__ import annotations

import functools
import inspect
import reprlib
import types
import typing
from collections.abc import Callable, Mapping
from typing import Any, TypeVar, Union

from celery.utils.log import get_task_logger
from django.db import DatabaseError

from rendition_worker.core.errors import BadMessage
from rendition_worker.services import outbox

# The task logger: each line carries the task's name and id in the worker's log.
logger = get_task_logger(__name__)
F = TypeVar("F", bound=Callable[..., Any])
# A hostile message may hold megabytes in one argument: the log line shows a little of it.
_short = reprlib.Repr()
_short.maxstring = _short.maxother = 60
_short.maxdict = _short.maxlist = 4


def checked_message(function: F) -> F:
    """Decorate a task's function: reject, in one log line, a call it cannot carry out.

    The wrapper keeps the function's signature (`__signature__`), so Celery still checks
    the arguments of our own publishes against it.
    """
    signature = inspect.signature(function)

    @functools.wraps(function)
    def run(*args: Any, **kwargs: Any) -> Any:
        problem = arguments_problem(signature, _hints(function), args, kwargs)
        if problem is None:
            try:
                return function(*args, **kwargs)
            except BadMessage as exc:
                problem = str(exc)
        return _reject(problem, kwargs.get("intent"))

    run.__signature__ = signature  # type: ignore[attr-defined]
    return typing.cast(F, run)


def arguments_problem(
    signature: inspect.Signature,
    hints: Mapping[str, Any],
    args: tuple[Any, ...],
    kwargs: Mapping[str, Any],
) -> str | None:
    """What keeps `args` and `kwargs` from being a call of `signature` typed by `hints`."""
    try:
        bound = signature.bind(*args, **kwargs)
    except TypeError as exc:  # "missing a required argument: 'name'", "unexpected keyword"
        return str(exc)
    for name, value in bound.arguments.items():
        hint = hints.get(name, Any)
        if not conforms(value, hint):
            return f"{name}={_short.repr(value)} is not of type {_describe(hint)}"
    return None


def conforms(value: object, hint: Any) -> bool:
    """Whether a JSON-decoded `value` is of type `hint` (the hints our tasks use)."""
    if hint is Any:
        return True
    origin = typing.get_origin(hint)
    if origin in (Union, types.UnionType):
        return any(conforms(value, option) for option in typing.get_args(hint))
    if hint is None or hint is type(None):
        return value is None
    if hint is int:  # JSON has no bool/int confusion, Python does
        return isinstance(value, int) and not isinstance(value, bool)
    if origin is dict:
        return isinstance(value, dict) and all(isinstance(key, str) for key in value)
    return isinstance(value, origin or hint)


def _describe(hint: Any) -> str:
    if typing.get_origin(hint) in (Union, types.UnionType):
        return " | ".join(_describe(option) for option in typing.get_args(hint))
    if hint is type(None):
        return "None"
    origin = typing.get_origin(hint) or hint
    return str(getattr(origin, "__name__", origin))


@functools.cache
def _hints(function: Callable[..., Any]) -> dict[str, Any]:
    # Resolved on first use: the annotations are strings (PEP 563) naming module globals.
    return typing.get_type_hints(function)


def _reject(problem: str, intent: object) -> dict[str, str]:
    done = ""
    if isinstance(intent, int) and not isinstance(intent, bool):
        try:
            outbox.intent_done(intent)
            done = f" (intent {intent} marked done)"
        except DatabaseError as exc:
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            done = f" (intent {intent} left for the relay: {first})"
    logger.warning("rejected message%s: %s", done, problem)
    return {"status": "rejected", "error": problem}
