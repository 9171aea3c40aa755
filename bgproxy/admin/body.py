"""Reading a mutating call's JSON body so that no input, however hostile, gets more than a 400 with a message.

Size is bounded by aiohttp (`client_max_size`, 413). Everything else is checked here before pydantic sees a value:
UTF-8 only; nesting at most `MAX_DEPTH` deep (checked before `json.loads`, which would otherwise hit Python's
recursion limit); numbers at most `MAX_NUMBER_LENGTH` characters and finite (no NaN/Infinity); no duplicate keys;
no lone surrogates. pydantic's errors become one readable sentence per field. The Content-Type is not looked at:
`curl -d` sends form-urlencoded, and cross-site requests are refused by the middleware, not by it.
"""

from __future__ import annotations

import json
import math
import reprlib
from collections.abc import Iterator
from typing import Any, TypeVar

from aiohttp import web
from pydantic import ValidationError
from pydantic_core import ErrorDetails

from .schemas import RequestBody

MAX_BODY = 16384
"""Bytes. Room for a reason at its maximum length however it is encoded: JSON may escape each character as a
surrogate pair, 12 bytes (\\ud83d\\ude80); 4 KiB would refuse bodies the OpenAPI document allows."""
MAX_DEPTH = 32
"""Nesting of arrays and objects; every body is at most 3 deep, so this only stops abuse."""
MAX_NUMBER_LENGTH = 40
"""Characters of one number literal: far beyond any weight or interval, far below Python's 4300-digit limit."""
MAX_ERRORS = 3  # field errors named in one message; the rest are counted

Body = TypeVar("Body", bound=RequestBody)


class BadBody(Exception):
    """A body that cannot be taken; the message says what is wrong, and where.

    `close_connection`: the rest of the body cannot be read either, so the connection cannot carry another request.
    """

    def __init__(self, message: str, *, close_connection: bool = False) -> None:
        super().__init__(message)
        self.close_connection = close_connection


async def read_body(request: web.Request, model: type[Body]) -> Body:
    """The body of a mutating call as `model`; raises `BadBody` (400) or aiohttp's 413."""
    try:
        raw = await request.read()
    except web.RequestPayloadError as exc:  # a Content-Encoding that does not decode (bad gzip, deflate)
        detail = str(exc).rpartition("\n")[2].strip() or type(exc).__name__  # aiohttp's last line says what failed
        raise BadBody(f"cannot read the request body: {detail}", close_connection=True) from None
    return parse_body(raw, model, call=request.path)


def parse_body(raw: bytes, model: type[Body], *, call: str) -> Body:
    required = [name for name, field in model.model_fields.items() if field.is_required()]
    wanted = "a JSON object" + (f" with {_names(required)}" if required else "")
    if not raw.strip():
        if required:
            raise BadBody(f"expected {wanted}, got an empty body")
        return model()
    value = decode_json(raw)
    if not isinstance(value, dict):
        raise BadBody(f"expected {wanted}, got {_shown(value)}")
    for name, hint in model.misplaced.items():
        if name in value:
            raise BadBody(f"{call} takes no {name!r}; {hint}")
    try:
        return model.model_validate(value)
    except ValidationError as exc:
        raise BadBody(describe(exc.errors(include_url=False), model)) from None


def decode_json(raw: bytes) -> object:
    """Strict JSON: see the module docstring for what is refused. Never raises anything but `BadBody`."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BadBody(f"request body is not valid UTF-8 (byte {exc.start}): send JSON encoded as UTF-8") from None
    _check_depth(text)
    try:
        value = json.loads(
            text,
            object_pairs_hook=_Object,
            parse_int=_int,
            parse_float=_float,
            parse_constant=_Refused.constant,
        )
    except json.JSONDecodeError as exc:
        raise BadBody(f"request body is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
    for path, problem in _problems(value, ()):
        raise BadBody(f"{_where(path)}: {problem}")
    return value


def _check_depth(text: str) -> None:
    """Refuse nesting deeper than MAX_DEPTH before the recursive parser sees it (brackets in strings do not count)."""
    depth, in_string, escaped = 0, False, False
    for ch in text:
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "[{":
            depth += 1
            if depth > MAX_DEPTH:
                raise BadBody(f"request body nests arrays and objects deeper than {MAX_DEPTH} levels")
        elif ch in "]}" and depth:
            depth -= 1


class _Refused:
    """A literal the parser met but bgproxy refuses; reported with the field it sits in, after parsing."""

    __slots__ = ("problem",)

    def __init__(self, problem: str) -> None:
        self.problem = problem

    @classmethod
    def constant(cls, literal: str) -> _Refused:
        return cls(f"{literal} is not a number JSON allows; send a finite number")


class _Object(dict[str, Any]):
    """A JSON object that remembers a key it saw twice (json.loads would keep the last value silently)."""

    __slots__ = ("duplicate",)

    def __init__(self, pairs: list[tuple[str, Any]]) -> None:
        super().__init__(pairs)
        self.duplicate: str | None = None
        if len(self) < len(pairs):
            seen: set[str] = set()
            for key, _ in pairs:
                if key in seen:
                    self.duplicate = key
                    break
                seen.add(key)


def _too_long(literal: str) -> _Refused | None:
    if len(literal) <= MAX_NUMBER_LENGTH:
        return None
    return _Refused(f"a number of {len(literal)} characters is too long; at most {MAX_NUMBER_LENGTH}")


def _int(literal: str) -> int | _Refused:
    return _too_long(literal) or int(literal)


def _float(literal: str) -> float | _Refused:
    refused = _too_long(literal)
    if refused is not None:
        return refused
    value = float(literal)
    if not math.isfinite(value):
        return _Refused(f"{literal} is beyond the range of a number; send a finite number")
    return value


def _problems(value: object, path: tuple[str | int, ...]) -> Iterator[tuple[tuple[str | int, ...], str]]:
    """Each refused literal, duplicate key or lone surrogate, with where it is (nesting is bounded already)."""
    if isinstance(value, _Refused):
        yield path, value.problem
    elif isinstance(value, str):
        if _has_surrogate(value):
            yield path, f"{_shown(value)} contains a lone surrogate, which is not a character; send UTF-8 text"
    elif isinstance(value, list):
        for i, item in enumerate(value):
            yield from _problems(item, (*path, i))
    elif isinstance(value, dict):
        if isinstance(value, _Object) and value.duplicate is not None:
            yield path, f"the key {_shown(value.duplicate)} appears twice; send each field once"
        for key, item in value.items():
            if _has_surrogate(key):
                yield path, f"the key {_shown(key)} contains a lone surrogate, which is not a character"
            yield from _problems(item, (*path, key))


def _has_surrogate(text: str) -> bool:
    # json.loads joins a valid \ud83d\ude80 pair into one character, so any surrogate left is a lone one.
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


# pydantic's error types, as sentences; {where} is the field, {got} what was sent, the rest from the error's context.
_MESSAGES = {
    "missing": "missing field {where}",
    "extra_forbidden": "unknown field {where}; allowed: {allowed}",
    "string_type": "{where} must be a string, got {got}",
    "bool_type": "{where} must be true or false, got {got}",
    "int_type": "{where} must be an integer, got {got}",
    "float_type": "{where} must be a number, got {got}",
    "list_type": "{where} must be an array, got {got}",
    "dict_type": "{where} must be an object, got {got}",
    "string_too_short": "{where} must have at least {min_length} characters",
    "string_too_long": "{where} must be a string of at most {max_length} characters, got {length}",
    "too_short": "{where} must have at least {min_length} items",
    "too_long": "{where} must have at most {max_length} items",
    "greater_than": "{where} must be greater than {gt}, got {got}",
    "greater_than_equal": "{where} must be at least {ge}, got {got}",
    "less_than": "{where} must be less than {lt}, got {got}",
    "less_than_equal": "{where} must be at most {le}, got {got}",
    "literal_error": "{where} must be one of {expected}, got {got}",
    "enum": "{where} must be one of {expected}, got {got}",
    "value_error": "{where}: {error}",
}
_FALLBACK = "{where}: {msg}"


def describe(errors: list[ErrorDetails], model: type[RequestBody]) -> str:
    """pydantic's errors as one message a person can act on: at most MAX_ERRORS sentences, the rest counted."""
    allowed = _names(list(model.model_fields))
    sentences: list[str] = []
    for err in errors:
        got = err["input"]
        fields = {
            **(err.get("ctx") or {}),
            "where": _where(err["loc"]),
            "got": _shown(got),
            "length": len(got) if isinstance(got, str | list) else "?",
            "allowed": allowed,
            "msg": err["msg"],
        }
        try:
            sentence = _MESSAGES.get(err["type"], _FALLBACK).format(**fields)
        except (KeyError, IndexError):  # a context this pydantic version does not give: its own words then
            sentence = _FALLBACK.format(**fields)
        if sentence not in sentences:
            sentences.append(sentence)
    more = len(sentences) - MAX_ERRORS
    return "; ".join(sentences[:MAX_ERRORS]) + (f" (and {more} more)" if more > 0 else "")


def _where(path: tuple[str | int, ...]) -> str:
    if not path:
        return "the body"
    dotted = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" if i else p for i, p in enumerate(path))
    return repr(_clip(dotted))


def _names(names: list[str]) -> str:
    return ", ".join(repr(n) for n in names)


def _clip(text: str, limit: int = 40) -> str:
    return text if len(text) <= limit else f"{text[: limit // 2]}...{text[-limit // 2 + 3 :]}"


def _shown(value: object) -> str:
    """A value as the person sent it, in JSON's words and short."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return reprlib.repr(value)
