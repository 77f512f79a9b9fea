"""Decode a Databricks REST request the way the service does: by the SDK's own signatures and dataclasses.

The request schema of an endpoint is the signature of the databricks-sdk method that calls it: its parameters
are the body's (or the query's) top-level fields, their type hints the fields' types, and a parameter without a
default is required. Nested objects are the SDK's dataclasses (``JobSettings``, ``Task``, ``CronSchedule``...):
a field they do not declare, a value of the wrong JSON type, or an enum value that does not exist is refused,
with the field's dotted path in the message, as the real service refuses a request it cannot parse.
"""
from __future__ import annotations

import dataclasses
import enum
import inspect
import typing
from typing import Any, Callable


class RequestRefused(Exception):
    """A request the service would refuse: HTTP status, error code and message."""

    def __init__(self, status: int, error_code: str, message: str):
        super().__init__(status, error_code, message)
        self.status, self.error_code, self.message = status, error_code, message

    def __str__(self) -> str:
        return self.message


def malformed(message: str) -> RequestRefused:
    return RequestRefused(400, "MALFORMED_REQUEST", f"Invalid JSON given in the body of the request - {message}")


def invalid(message: str) -> RequestRefused:
    return RequestRefused(400, "INVALID_PARAMETER_VALUE", message)


_HINTS: dict[Any, dict[str, Any]] = {}


def _hints(obj: Any) -> dict[str, Any]:
    if obj not in _HINTS:
        _HINTS[obj] = typing.get_type_hints(obj)
    return _HINTS[obj]


def decode_body(method: Callable, body: Any, exclude: tuple[str, ...] = ()) -> dict:
    """Check a JSON body against the parameters of the SDK ``method`` that sends it."""
    if body is None:
        body = {}
    if not isinstance(body, dict):
        raise malformed("expected a JSON object")
    return _check_fields(_parameters(method, exclude), body, "")


def decode_query(method: Callable, query: dict[str, str], exclude: tuple[str, ...] = ()) -> dict:
    """Check query parameters (strings) against the SDK ``method``'s parameters, converting scalars."""
    params = _parameters(method, exclude)
    converted: dict[str, Any] = {}
    for name, text in query.items():
        if name not in params:
            raise invalid(f"Unknown query parameter '{name}'")
        kind = _scalar(params[name][0])
        try:
            if kind is bool:
                if text not in ("true", "false"):
                    raise ValueError(text)
                converted[name] = text == "true"
            elif kind is int:
                converted[name] = int(text)
            elif isinstance(kind, type) and issubclass(kind, enum.Enum):
                converted[name] = _enum(kind, text, name)
            else:
                converted[name] = text
        except ValueError:
            raise invalid(f"Query parameter '{name}' must be of type {getattr(kind, '__name__', kind)}, "
                          f"got '{text}'") from None
    for name, (_, required) in params.items():
        if required and name not in converted:
            raise invalid(f"Missing required field: {name}")
    return converted


def decode_dataclass(cls: type, value: Any, where: str = "") -> dict:
    if not isinstance(value, dict):
        raise malformed(f"expected an object for '{where or cls.__name__}'")
    fields = {f.name: (_hints(cls)[f.name], f.default is dataclasses.MISSING
                       and f.default_factory is dataclasses.MISSING)
              for f in dataclasses.fields(cls)}
    return _check_fields(fields, value, where)


def _parameters(method: Callable, exclude: tuple[str, ...]) -> dict[str, tuple[Any, bool]]:
    hints = _hints(method)
    return {name: (hints.get(name, Any), p.default is inspect.Parameter.empty)
            for name, p in inspect.signature(method).parameters.items()
            if name != "self" and name not in exclude}


def _check_fields(fields: dict[str, tuple[Any, bool]], value: dict, where: str) -> dict:
    for key in value:
        if key not in fields:
            raise malformed(f"unknown field '{where}{key}'")
    for name, (hint, required) in fields.items():
        if required and value.get(name) is None:
            raise invalid(f"Missing required field: {where}{name}")
        if value.get(name) is not None:
            _check(value[name], hint, f"{where}{name}")
    return value


def _scalar(hint: Any) -> Any:
    if typing.get_origin(hint) is typing.Union:
        return _scalar(next(a for a in typing.get_args(hint) if a is not type(None)))
    return hint


def _enum(cls: type, value: Any, where: str):
    allowed = [m.value for m in cls]
    if value not in allowed:
        raise invalid(f"Invalid value '{value}' for '{where}': must be one of {', '.join(map(str, allowed))}")
    return value


def _check(value: Any, hint: Any, where: str) -> None:
    hint = _scalar(hint)
    origin = typing.get_origin(hint)
    if hint is Any:
        return
    if origin in (list, typing.List):
        if not isinstance(value, list):
            raise malformed(f"expected an array for '{where}'")
        (item,) = typing.get_args(hint) or (Any,)
        for i, element in enumerate(value):
            _check(element, item, f"{where}[{i}]")
        return
    if origin in (dict, typing.Dict):
        if not isinstance(value, dict):
            raise malformed(f"expected an object for '{where}'")
        args = typing.get_args(hint)
        for key, element in value.items():
            _check(element, args[1] if args else Any, f"{where}.{key}")
        return
    if dataclasses.is_dataclass(hint):
        decode_dataclass(hint, value, f"{where}.")
        return
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        _enum(hint, value, where)
        return
    expected = {str: (str,), bool: (bool,), int: (int,), float: (int, float)}.get(hint)
    if expected is None:
        return  # a type the SDK sends as an opaque value (Any-like)
    if not isinstance(value, expected) or (hint is not bool and isinstance(value, bool)):
        raise malformed(f"expected {hint.__name__} for '{where}', got {type(value).__name__} {value!r}")
