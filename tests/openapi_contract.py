"""Check HTTP answers against OpenAI's own OpenAPI description (wire compatibility).

The reference is ``../shared/openai-openapi/openapi.yaml`` beside the repository (or the file
named by ``HAL9100_OPENAPI_SPEC``). Its README lists the slips this module corrects before
validating:

* ``nullable: true`` (OpenAPI 3.0) is rewritten to ``anyOf: [<schema>, {"type": "null"}]``,
  since a JSON Schema 2020-12 validator ignores the keyword;
* list envelopes accept ``first_id`` / ``last_id`` = null (OpenAI's answer for an empty page);
* ``OpenAIFile.purpose`` also accepts ``evals``;
* ``GET /files/{file_id}/content`` (and the other ``.../content`` downloads) is raw bytes, not
  the JSON string the file declares, so it is not validated;
* streaming answers are checked event by event against ``AssistantStreamEvent``.

Public API:

* ``SPEC_PATH``, ``spec_available()``, ``require_spec()``, ``load_spec()``
* ``validate_schema(instance, "RunObject")``
* ``response_schema_for(method, path, status)``, ``validate_response(method, path, status, body)``
* ``validate_stream_event(event, data)``, ``validate_sse_text(text)``, ``stream_event_names()``
* ``make_validating_http_client()`` / ``make_validating_async_http_client()``: httpx clients for
  ``openai.OpenAI(http_client=...)`` that validate every JSON answer as it arrives.

Every check raises ``ContractViolation`` (an ``AssertionError``) with a readable report.
"""

from __future__ import annotations

import codecs
import functools
import json
import os
import re
from collections.abc import AsyncIterator, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, quote

import httpx
import pytest
import yaml
from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError, best_match
from referencing import Registry
from referencing.jsonschema import DRAFT202012

__all__ = [
    "ENV_REQUIRE",
    "ENV_SPEC",
    "SPEC_PATH",
    "ContractViolation",
    "ValidatedResponse",
    "ValidatingAsyncClient",
    "ValidatingClient",
    "load_spec",
    "make_validating_async_http_client",
    "make_validating_http_client",
    "require_spec",
    "response_schema_for",
    "rewrite_nullable",
    "spec_available",
    "stream_event_names",
    "validate_response",
    "validate_schema",
    "validate_sse_text",
    "validate_stream_event",
]

ENV_SPEC = "HAL9100_OPENAPI_SPEC"
ENV_REQUIRE = "HAL9100_REQUIRE_OPENAPI"

_REPO_ROOT = Path(__file__).resolve().parent.parent
_DEFAULT_SPEC = _REPO_ROOT.parent / "shared" / "openai-openapi" / "openapi.yaml"
SPEC_PATH: Path = Path(os.environ[ENV_SPEC]) if os.environ.get(ENV_SPEC) else _DEFAULT_SPEC

# Refs inside the spec are document-relative ("#/components/schemas/X"); registering the whole
# document under one URI lets every schema, inline ones under /paths included, be addressed
# by JSON pointer and share a single registry.
_SPEC_URI = "urn:hal9100:openai-openapi"

_BODY_PREVIEW_CHARS = 2000
_MESSAGE_CHARS = 400
_MAX_LISTED_ERRORS = 25

JSON = Any


class ContractViolation(AssertionError):
    """An answer does not match OpenAI's OpenAPI description."""


# --------------------------------------------------------------------------- spec location


def spec_available() -> bool:
    return SPEC_PATH.is_file()


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in {"1", "true", "yes", "on"}


def require_spec() -> None:
    """Skip the calling test when the spec is absent, or fail it when CI demands the spec."""
    if spec_available():
        return
    where = (
        f"{SPEC_PATH} (from {ENV_SPEC})"
        if os.environ.get(ENV_SPEC)
        else "../shared/openai-openapi/openapi.yaml"
    )
    if _truthy(os.environ.get(ENV_REQUIRE)):
        pytest.fail(
            f"{where} not found: the OpenAPI contract checks are mandatory in CI "
            f"({ENV_REQUIRE}=1); put OpenAI's openapi.yaml there or point {ENV_SPEC} at it",
            pytrace=False,
        )
    pytest.skip(
        f"{where} not found: the OpenAPI contract checks need OpenAI's spec beside the repo; "
        "CI makes them mandatory"
    )


# --------------------------------------------------------------------------- loading


_BaseLoader: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class _SpecLoader(_BaseLoader):  # type: ignore[misc]
    """Safe YAML loader that keeps date-like scalars as strings.

    JSON has no dates, and a `datetime.date` in the document would neither compare equal to
    the string an answer carries nor survive `json.dumps` in error reports.
    """


_SpecLoader.add_constructor("tag:yaml.org,2002:timestamp", _SpecLoader.construct_yaml_str)

# Keywords whose values are schemas, maps of schemas, or lists of schemas; walking only these
# keeps the rewrite away from look-alike keys in examples and `properties` maps.
_SCHEMA_VALUED = (
    "items",
    "additionalItems",
    "additionalProperties",
    "unevaluatedItems",
    "unevaluatedProperties",
    "contains",
    "propertyNames",
    "not",
    "if",
    "then",
    "else",
)
_SCHEMA_MAPS = ("properties", "patternProperties", "$defs", "definitions", "dependentSchemas")
_SCHEMA_LISTS = ("allOf", "anyOf", "oneOf", "prefixItems")
# Keys that do not constrain an instance: a schema made only of these already accepts null.
_ANNOTATIONS = frozenset(
    {"description", "title", "example", "examples", "default", "deprecated", "readOnly"}
    | {"writeOnly", "$comment", "discriminator", "externalDocs", "xml"}
)


def rewrite_nullable(schema: JSON, _seen: set[int] | None = None) -> JSON:
    """Rewrite OpenAPI 3.0 `nullable: true` in place into JSON Schema's "this or null".

    `{..., "nullable": true}` becomes `{"anyOf": [{...}, {"type": "null"}]}`. Wrapping, rather
    than adding "null" to `type`, keeps `enum`, `$ref` siblings, `allOf`/`oneOf` and
    `properties` intact while still letting null through all of them.

    A bare `{"nullable": true}` constrains nothing, so `allOf: [{$ref: X}, {nullable: true}]`
    stays as strict as X: the README confirms OpenAI never sends null there (a run always
    carries `truncation_strategy` and `tool_choice` objects).
    """
    seen = set() if _seen is None else _seen
    if not isinstance(schema, dict) or id(schema) in seen:
        return schema
    seen.add(id(schema))
    for key in _SCHEMA_VALUED:
        child = schema.get(key)
        if isinstance(child, dict):
            rewrite_nullable(child, seen)
        elif isinstance(child, list):
            for item in child:
                rewrite_nullable(item, seen)
    for key in _SCHEMA_MAPS:
        children = schema.get(key)
        if isinstance(children, dict):
            for child in children.values():
                rewrite_nullable(child, seen)
    for key in _SCHEMA_LISTS:
        children = schema.get(key)
        if isinstance(children, list):
            for child in children:
                rewrite_nullable(child, seen)

    if "nullable" not in schema or not isinstance(schema["nullable"], bool):
        return schema
    nullable = schema.pop("nullable")
    constraining = any(key not in _ANNOTATIONS and not key.startswith("x-") for key in schema)
    if nullable and constraining:
        inner = dict(schema)
        schema.clear()
        schema["anyOf"] = [inner, {"type": "null"}]
    return schema


def _rewrite_schemas_in(node: JSON) -> None:
    """Find every `schema` of parameters, request and response bodies outside components."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "schema" and isinstance(value, dict):
                rewrite_nullable(value)
            elif not key.startswith("x-"):
                _rewrite_schemas_in(value)
    elif isinstance(node, list):
        for item in node:
            _rewrite_schemas_in(item)


def _accepts_null(schema: JSON) -> bool:
    if not isinstance(schema, dict):
        return schema is True
    kind = schema.get("type")
    if kind == "null" or (isinstance(kind, list) and "null" in kind):
        return True
    return any(_accepts_null(branch) for branch in schema.get("anyOf", []))


def _apply_known_slips(schemas: dict[str, JSON]) -> None:
    for schema in schemas.values():
        props = schema.get("properties") if isinstance(schema, dict) else None
        if not isinstance(props, dict) or not {"data", "has_more"} <= props.keys():
            continue
        # Pagination envelopes: OpenAI answers first_id/last_id = null on an empty page.
        for key in ("first_id", "last_id"):
            if key in props and not _accepts_null(props[key]):
                props[key] = {"anyOf": [props[key], {"type": "null"}]}

    # Uploads accept purpose=evals and the file object echoes it, but the enum omits it.
    purpose = schemas.get("OpenAIFile", {}).get("properties", {}).get("purpose", {})
    enum = purpose.get("enum") if isinstance(purpose, dict) else None
    if isinstance(enum, list) and "evals" not in enum:
        enum.append("evals")


@functools.cache
def _load_spec_cached(path: Path) -> dict[str, JSON]:
    with path.open("rb") as handle:
        spec: dict[str, JSON] = yaml.load(handle, Loader=_SpecLoader)
    components = spec.setdefault("components", {})
    schemas = components.setdefault("schemas", {})
    for schema in schemas.values():
        rewrite_nullable(schema)
    for section in (spec.get("paths"), spec.get("webhooks"), components.get("responses")):
        _rewrite_schemas_in(section)
    _apply_known_slips(schemas)
    return spec


def load_spec() -> dict[str, JSON]:
    """The preprocessed spec, parsed once per process. Treat it as read-only."""
    require_spec()
    return _load_spec_cached(SPEC_PATH)


@functools.cache
def _registry() -> Registry[Any]:
    resource = DRAFT202012.create_resource(load_spec())
    registry: Registry[Any] = Registry().with_resource(_SPEC_URI, resource)
    return registry


def _escape(token: str) -> str:
    return token.replace("~", "~0").replace("/", "~1")


def _pointer(*tokens: str) -> str:
    return "".join("/" + _escape(token) for token in tokens)


def _resolve_pointer(pointer: str) -> JSON:
    node: JSON = load_spec()
    for token in pointer.split("/")[1:]:
        token = token.replace("~1", "/").replace("~0", "~")
        node = node[int(token)] if isinstance(node, list) else node[token]
    return node


def _component_name(schema: JSON) -> str | None:
    """The component name X when `schema` is exactly a `$ref` to #/components/schemas/X."""
    if isinstance(schema, dict) and set(schema) == {"$ref"}:
        ref = schema["$ref"]
        prefix = "#/components/schemas/"
        if isinstance(ref, str) and ref.startswith(prefix) and "/" not in ref[len(prefix) :]:
            return ref[len(prefix) :]
    return None


@functools.cache
def _validator(pointer: str) -> Draft202012Validator:
    # Format checking stays off: the spec uses custom formats (unixtime) and OpenAI's own
    # answers are not format-strict either.
    ref = f"{_SPEC_URI}#{quote(pointer, safe='/~')}"
    return Draft202012Validator({"$ref": ref}, registry=_registry())


# --------------------------------------------------------------------------- reporting


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _describe(error: ValidationError) -> str:
    line = f"{error.json_path}: {_clip(error.message, _MESSAGE_CHARS)}"
    if error.context:
        # anyOf/oneOf only say "not valid under any of the given schemas"; the closest
        # branch's own complaint is what tells a reader what to fix.
        closest = best_match(error.context)
        line += f"\n      closest branch: {closest.json_path}: "
        line += _clip(closest.message, _MESSAGE_CHARS)
    return line


def _preview(instance: JSON) -> str:
    try:
        text = json.dumps(instance, indent=2, default=repr)
    except (TypeError, ValueError):
        text = repr(instance)
    return _clip(text, _BODY_PREVIEW_CHARS)


def _check(pointer: str, label: str, instance: JSON, context: str = "") -> None:
    validator = _validator(pointer)
    if validator.is_valid(instance):
        return
    errors = list(validator.iter_errors(instance))
    best = best_match(errors)
    assert best is not None
    others = [error for error in errors if error is not best]
    others.sort(key=lambda error: [str(token) for token in error.absolute_path])
    lines = [f"OpenAPI contract violation: {context or 'instance'} does not match {label}"]
    lines.append(f"  best match: {_describe(best)}")
    if others:
        lines.append(f"  all errors ({len(errors)}):")
        for error in [best, *others][:_MAX_LISTED_ERRORS]:
            lines.append(f"    - {_describe(error)}")
        if len(errors) > _MAX_LISTED_ERRORS:
            lines.append(f"    ... {len(errors) - _MAX_LISTED_ERRORS} more")
    lines.append(f"  offending JSON: {_preview(instance)}")
    raise ContractViolation("\n".join(lines))


# --------------------------------------------------------------------------- schemas


def validate_schema(instance: JSON, schema_name: str) -> None:
    """Validate `instance` against components/schemas/<schema_name> (preprocessed)."""
    if schema_name not in load_spec()["components"]["schemas"]:
        raise KeyError(f"no schema {schema_name!r} in {SPEC_PATH}")
    _check(_pointer("components", "schemas", schema_name), schema_name, instance)


# --------------------------------------------------------------------------- paths


_METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")


@dataclass(frozen=True)
class _Route:
    template: str
    segments: tuple[str | None, ...]  # None marks a {parameter}
    query: tuple[tuple[str, str], ...]  # e.g. the spec's "/responses?beta=true" twins
    rank: tuple[int, ...]

    def matches(self, segments: list[str], query: set[tuple[str, str]]) -> bool:
        return all(
            segment if literal is None else literal == segment
            for literal, segment in zip(self.segments, segments, strict=True)
        ) and query.issuperset(self.query)


def _split_path(path: str) -> list[str]:
    trimmed = path.strip("/")
    return trimmed.split("/") if trimmed else []


@functools.cache
def _routes() -> dict[int, list[_Route]]:
    """Templates bucketed by segment count, most specific first.

    A literal segment outranks a parameter at the same position, leftmost first, so
    `/threads/runs` wins over `/threads/{thread_id}`.
    """
    buckets: dict[int, list[_Route]] = {}
    for template in load_spec().get("paths", {}):
        raw_path, _, raw_query = template.partition("?")
        segments = tuple(
            None if re.fullmatch(r"\{[^{}/]+\}", segment) else segment
            for segment in _split_path(raw_path)
        )
        query = tuple(parse_qsl(raw_query, keep_blank_values=True))
        rank = (*(0 if segment is None else 1 for segment in segments), len(query))
        buckets.setdefault(len(segments), []).append(_Route(template, segments, query, rank))
    for routes in buckets.values():
        routes.sort(key=lambda route: route.rank, reverse=True)
    return buckets


def _match_routes(path: str) -> Iterator[_Route]:
    """Templates matching `path`, most specific first."""
    raw_path, _, raw_query = path.partition("?")
    # HAL-9100 serves every route with and without /v1; the spec's paths have no prefix
    # because its server URL already ends in /v1.
    if raw_path == "/v1" or raw_path.startswith("/v1/"):
        raw_path = raw_path[3:]
    segments = _split_path(raw_path)
    query = set(parse_qsl(raw_query, keep_blank_values=True))
    for route in _routes().get(len(segments), []):
        if route.matches(segments, query):
            yield route


@dataclass(frozen=True)
class _Target:
    """What an answer must look like: `pointer`/`label` set, or `reason` says why not."""

    pointer: str | None = None
    label: str | None = None
    reason: str = ""
    undeclared: bool = False


_ERROR_RESPONSE = _Target(_pointer("components", "schemas", "ErrorResponse"), "ErrorResponse")


def _is_raw_download(template: str, schema: JSON) -> bool:
    # The spec calls downloads `application/json` strings; they are the file's own bytes.
    return template.split("?")[0].endswith("/content") and schema == {"type": "string"}


def _target(method: str, path: str, status: int) -> _Target:
    verb = method.lower()
    paths = load_spec()["paths"]
    routes = list(_match_routes(path))
    # Like Starlette's router (HAL-9100's), a template without this method yields to the
    # next one that has it: GET /threads/runs is GET /threads/{thread_id} with id "runs".
    route = next((r for r in routes if verb in _METHODS and verb in paths[r.template]), None)
    if route is None:
        if not routes:
            return _Target(reason=f"no path in the spec matches {path}")
        return _Target(reason=f"the spec has no {method.upper()} {routes[0].template}")
    if status >= 400:
        # OpenAI wraps every error as {"error": {...}} and the SDK reads it from there. The
        # Assistants operations declare only 429 (ErrorResponse) and nothing else; the few
        # operations elsewhere that declare a bare `Error`/`BetaError` body contradict
        # OpenAI's actual answers, so every error status is held to ErrorResponse.
        return _ERROR_RESPONSE
    operation = paths[route.template][verb]
    responses: dict[str, JSON] = operation.get("responses", {})
    key = str(status)
    if key not in responses:
        key = next(
            (k for k in (f"{status // 100}XX", f"{status // 100}xx", "default") if k in responses),
            "",
        )
    if not key:
        if 200 <= status < 300:
            declared = ", ".join(sorted(responses))
            return _Target(
                reason=f"the spec declares only {declared} for {method.upper()} "
                f"{route.template}, not {status}",
                undeclared=True,
            )
        return _Target(reason=f"status {status} carries no body schema")

    base = _pointer("paths", route.template, verb, "responses", key)
    response = responses[key]
    if isinstance(response.get("$ref"), str):
        base = response["$ref"].removeprefix("#")
        response = _resolve_pointer(base)
    media = (response.get("content") or {}).get("application/json")
    schema = media.get("schema") if isinstance(media, dict) else None
    if schema is None:
        return _Target(reason=f"{method.upper()} {route.template} -> {key} has no JSON body")
    if _is_raw_download(route.template, schema):
        return _Target(reason=f"{route.template} answers raw file bytes")
    name = _component_name(schema)
    if name is not None:
        return _Target(_pointer("components", "schemas", name), name)
    pointer = base + _pointer("content", "application/json", "schema")
    return _Target(pointer, "#" + pointer)


def response_schema_for(method: str, path: str, status: int) -> dict[str, JSON] | None:
    """The (preprocessed) schema an answer to `method path` with `status` must match.

    `path` is a concrete request path, with or without /v1 and query string. A schema that is
    just a `$ref` to a component is returned resolved. None when no JSON schema applies:
    unknown path or method, raw downloads, bodiless statuses, or undeclared success statuses.
    """
    target = _target(method, path, status)
    if target.pointer is None:
        return None
    schema: dict[str, JSON] = _resolve_pointer(target.pointer)
    return schema


def validate_response(method: str, path: str, status: int, body_json: JSON) -> str | None:
    """Validate a decoded JSON answer; return the schema name (or spec pointer) used.

    None when no schema applies (see `response_schema_for`). A success status the operation
    does not declare (201 where OpenAI answers 200) is itself a violation. Every error status
    (4xx/5xx) of a known operation is held to ErrorResponse, OpenAI's `{"error": {...}}`.
    """
    return _validate_target(_target(method, path, status), method, path, status, body_json)


def _validate_target(
    target: _Target, method: str, path: str, status: int, body_json: JSON
) -> str | None:
    context = f"{method.upper()} {path} -> {status}"
    if target.undeclared:
        raise ContractViolation(f"OpenAPI contract violation: {context}: {target.reason}")
    if target.pointer is None or target.label is None:
        return None
    _check(target.pointer, target.label, body_json, context)
    return target.label


# --------------------------------------------------------------------------- streaming


def _event_names(schema: JSON) -> list[str]:
    event = schema.get("properties", {}).get("event") if isinstance(schema, dict) else None
    if not isinstance(event, dict):
        return []
    if "const" in event:
        return [event["const"]]
    return [name for name in event.get("enum", []) if isinstance(name, str)]


@functools.cache
def _stream_events() -> dict[str, tuple[str, str]]:
    """Event name -> (pointer to its `data` schema, label), from AssistantStreamEvent down."""
    found: dict[str, tuple[str, str]] = {}

    def visit(pointer: str, depth: int) -> None:
        node = _resolve_pointer(pointer)
        if depth > 8 or not isinstance(node, dict):
            return
        if isinstance(node.get("$ref"), str):
            visit(node["$ref"].removeprefix("#"), depth + 1)
        for keyword in ("oneOf", "anyOf"):
            for index in range(len(node.get(keyword, []))):
                visit(f"{pointer}/{keyword}/{index}", depth + 1)
        for name in _event_names(node):
            data = node["properties"].get("data")
            label = _component_name(data) or f"#{pointer}/properties/data"
            found.setdefault(name, (f"{pointer}/properties/data", label))

    visit(_pointer("components", "schemas", "AssistantStreamEvent"), 0)
    return found


def stream_event_names() -> frozenset[str]:
    """Every event name the Assistants streaming protocol defines."""
    return frozenset(_stream_events())


def validate_stream_event(event: str, data: JSON) -> str:
    """Validate one server-sent event of an Assistants stream; return the data schema's name.

    `data` is the decoded JSON payload, or the raw `data:` text (str/bytes) which is decoded
    here; for `done` it is the literal string "[DONE]".
    """
    events = _stream_events()
    if event not in events:
        raise ContractViolation(
            f"OpenAPI contract violation: unknown Assistants stream event {event!r}; "
            f"AssistantStreamEvent defines {', '.join(sorted(events))}"
        )
    pointer, label = events[event]
    if isinstance(data, bytes):
        data = data.decode("utf-8")
    if isinstance(data, str) and event != "done":
        try:
            data = json.loads(data)
        except json.JSONDecodeError as exc:
            raise ContractViolation(
                f"OpenAPI contract violation: stream event {event!r} carries non-JSON data "
                f"({exc}): {_clip(data, _BODY_PREVIEW_CHARS)}"
            ) from None
    _check(pointer, label, data, f"data of stream event {event!r}")
    return label


class _SSEParser:
    """Incremental text/event-stream parser that dispatches events the way the SDK's does.

    Like the SDK, an `event:` without `data:` still dispatches (with empty data, which then
    fails validation), and an event left open at the end of the stream is lost to clients,
    so `close()` reports it as a violation.
    """

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="strict")
        self._pending = ""
        self._event: str | None = None
        self._data: list[str] = []

    def _decode(self, chunk: bytes, final: bool = False) -> str:
        try:
            return self._decoder.decode(chunk, final)
        except UnicodeDecodeError as exc:
            raise ContractViolation(
                f"OpenAPI contract violation: the event stream is not UTF-8 ({exc})"
            ) from None

    def feed(self, chunk: bytes) -> list[tuple[str, str]]:
        text = self._pending + self._decode(chunk)
        # A trailing "\r" may be the first half of "\r\n" still in flight.
        hold = text.endswith("\r")
        lines = re.split(r"\r\n|\r|\n", text[:-1] if hold else text)
        self._pending = lines.pop() + ("\r" if hold else "")
        events: list[tuple[str, str]] = []
        for line in lines:
            self._line(line, events)
        return events

    def close(self) -> list[tuple[str, str]]:
        lines = re.split(r"\r\n|\r|\n", self._pending + self._decode(b"", final=True))
        self._pending = ""
        last = lines.pop()  # no terminator: the SDK still reads it as a field line
        events: list[tuple[str, str]] = []
        for line in [*lines, last] if last else lines:
            self._line(line, events)
        if self._data or self._event is not None:
            unterminated = "\n".join(
                ([f"event: {self._event}"] if self._event is not None else [])
                + [f"data: {data}" for data in self._data]
            )
            raise ContractViolation(
                "OpenAPI contract violation: the event stream ended inside an event (no blank "
                "line after it), so SSE clients, the openai SDK included, drop it:\n"
                + _clip(unterminated, _BODY_PREVIEW_CHARS)
            )
        return events

    def _line(self, line: str, events: list[tuple[str, str]]) -> None:
        if not line:
            if self._data or self._event is not None:
                events.append((self._event or "message", "\n".join(self._data)))
            self._event, self._data = None, []
            return
        if line.startswith(":"):
            return
        field, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if field == "event":
            self._event = value
        elif field == "data":
            self._data.append(value)


def _parse_sse(chunks: Iterable[bytes]) -> Iterator[tuple[str, str]]:
    parser = _SSEParser()
    for chunk in chunks:
        yield from parser.feed(chunk)
    yield from parser.close()


def validate_sse_text(text: str | bytes) -> list[str]:
    """Validate every event of a whole text/event-stream body; return the event names.

    For raw-HTTP tests (`httpx` with `stream: true`); assert on the returned order yourself,
    e.g. that it ends with "done".
    """
    raw = text.encode("utf-8") if isinstance(text, str) else text
    names = []
    for event, data in _parse_sse([raw]):
        validate_stream_event(event, data)
        names.append(event)
    return names


# --------------------------------------------------------------------------- httpx clients


def _media_type(response: httpx.Response) -> str:
    content_type: str = response.headers.get("content-type", "")
    return content_type.split(";")[0].strip().lower()


def _is_json(media_type: str) -> bool:
    return media_type == "application/json" or media_type.endswith("+json")


def _request_path(response: httpx.Response) -> str:
    url = response.request.url
    query = url.query.decode("ascii", "replace")
    return url.path + (f"?{query}" if query else "")


@dataclass(frozen=True)
class ValidatedResponse:
    method: str
    path: str
    status: int
    schema: str


class _ValidationState:
    """Bookkeeping shared by the sync and async clients."""

    def __init__(self, *, validate_streams: bool, enabled: bool) -> None:
        self.validate_streams = validate_streams
        self.enabled = enabled
        self.validated: list[ValidatedResponse] = []
        self.validated_events: list[str] = []
        self.failures: list[str] = []

    @property
    def validated_count(self) -> int:
        """JSON answers checked against a schema (skipped ones are not counted)."""
        return len(self.validated)

    def reset(self) -> None:
        self.validated.clear()
        self.validated_events.clear()
        self.failures.clear()

    def _fail(self, exc: ContractViolation) -> ContractViolation:
        self.failures.append(str(exc))
        return exc

    def finish(self, parser: _SSEParser) -> list[tuple[str, str]]:
        try:
            return parser.close()
        except ContractViolation as exc:
            raise self._fail(exc) from None

    def check_event(self, event: str, data: str) -> None:
        try:
            validate_stream_event(event, data)
        except ContractViolation as exc:
            raise self._fail(exc) from None
        self.validated_events.append(event)

    def target_for(self, response: httpx.Response) -> _Target | None:
        """What the (non-SSE) body must match, or None when the hook should not read it."""
        media_type = _media_type(response)
        if not self.enabled or media_type == "text/event-stream":
            return None
        status = response.status_code
        target = _target(response.request.method, _request_path(response), status)
        if target.pointer is None and not target.undeclared:
            return None  # outside the spec, raw downloads, bodiless answers
        if not _is_json(media_type) and not 200 <= status < 300:
            # A crash's text/plain 500 is for the test to surface, not for a schema report.
            return None
        return target

    def check_body(self, response: httpx.Response, target: _Target) -> None:
        method, path, status = (
            response.request.method,
            _request_path(response),
            response.status_code,
        )
        context = f"{method} {path} -> {status}"
        media_type = _media_type(response)
        if target.undeclared:
            raise self._fail(
                ContractViolation(f"OpenAPI contract violation: {context}: {target.reason}")
            )
        if not _is_json(media_type):
            raise self._fail(
                ContractViolation(
                    f"OpenAPI contract violation: {context} answered {media_type or 'no'} "
                    f"content-type where the spec declares application/json: "
                    f"{_clip(response.text, _BODY_PREVIEW_CHARS)}"
                )
            )
        try:
            body = json.loads(response.content)
        except json.JSONDecodeError as exc:
            raise self._fail(
                ContractViolation(
                    f"OpenAPI contract violation: {context} is labelled {media_type} but is "
                    f"not JSON ({exc}): {_clip(response.text, _BODY_PREVIEW_CHARS)}"
                )
            ) from None
        try:
            schema = _validate_target(target, method, path, status, body)
        except ContractViolation as exc:
            raise self._fail(exc) from None
        if schema is not None:
            self.validated.append(ValidatedResponse(method, path, status, schema))

    def wants_stream(self, response: httpx.Response) -> bool:
        return (
            self.enabled
            and self.validate_streams
            and _media_type(response) == "text/event-stream"
            and 200 <= response.status_code < 300
        )


class _ValidatingSyncStream(httpx.SyncByteStream):
    """Passes SSE bytes through untouched, validating each event once it is complete."""

    def __init__(self, inner: httpx.SyncByteStream, state: _ValidationState) -> None:
        self._inner = inner
        self._state = state

    def __iter__(self) -> Iterator[bytes]:
        parser = _SSEParser()
        for chunk in self._inner:
            for event, data in parser.feed(chunk):
                self._state.check_event(event, data)
            yield chunk
        for event, data in self._state.finish(parser):
            self._state.check_event(event, data)

    def close(self) -> None:
        self._inner.close()


class _ValidatingAsyncStream(httpx.AsyncByteStream):
    def __init__(self, inner: httpx.AsyncByteStream, state: _ValidationState) -> None:
        self._inner = inner
        self._state = state

    async def __aiter__(self) -> AsyncIterator[bytes]:
        parser = _SSEParser()
        async for chunk in self._inner:
            for event, data in parser.feed(chunk):
                self._state.check_event(event, data)
            yield chunk
        for event, data in self._state.finish(parser):
            self._state.check_event(event, data)

    async def aclose(self) -> None:
        await self._inner.aclose()


def _with_hook(kwargs: dict[str, Any], hook: Any) -> dict[str, Any]:
    hooks = {key: list(value) for key, value in (kwargs.pop("event_hooks", None) or {}).items()}
    hooks.setdefault("response", []).append(hook)
    return {**kwargs, "event_hooks": hooks}


class _ContractRecord:
    """What a validating client has checked so far, for tests to assert on."""

    contract: _ValidationState

    @property
    def validated(self) -> list[ValidatedResponse]:
        """JSON answers validated against a schema, in order."""
        return self.contract.validated

    @property
    def validated_count(self) -> int:
        """How many answers were validated (those outside the spec are not counted)."""
        return self.contract.validated_count

    @property
    def validated_events(self) -> list[str]:
        """Names of the stream events validated (only with `validate_streams=True`)."""
        return self.contract.validated_events

    @property
    def failures(self) -> list[str]:
        """Every violation report raised so far."""
        return self.contract.failures

    def reset_contract_record(self) -> None:
        self.contract.reset()


class ValidatingClient(_ContractRecord, httpx.Client):
    """httpx.Client whose response hook validates every JSON answer against the spec."""

    def __init__(
        self, *, validate_streams: bool = False, require: bool = True, **kwargs: Any
    ) -> None:
        if require:
            require_spec()
        self.contract = _ValidationState(
            validate_streams=validate_streams, enabled=spec_available()
        )
        super().__init__(**_with_hook(kwargs, self._validate_response))

    def _validate_response(self, response: httpx.Response) -> None:
        state = self.contract
        if state.wants_stream(response) and isinstance(response.stream, httpx.SyncByteStream):
            # The SDK reads the stream lazily; wrapping it (never reading it here) keeps
            # streaming live while each event is checked as it goes by.
            response.stream = _ValidatingSyncStream(response.stream, state)
            return
        target = state.target_for(response)
        if target is not None:
            response.read()
            state.check_body(response, target)


class ValidatingAsyncClient(_ContractRecord, httpx.AsyncClient):
    """The async twin of `ValidatingClient`."""

    def __init__(
        self, *, validate_streams: bool = False, require: bool = True, **kwargs: Any
    ) -> None:
        if require:
            require_spec()
        self.contract = _ValidationState(
            validate_streams=validate_streams, enabled=spec_available()
        )
        super().__init__(**_with_hook(kwargs, self._validate_response))

    async def _validate_response(self, response: httpx.Response) -> None:
        state = self.contract
        if state.wants_stream(response) and isinstance(response.stream, httpx.AsyncByteStream):
            response.stream = _ValidatingAsyncStream(response.stream, state)
            return
        target = state.target_for(response)
        if target is not None:
            await response.aread()
            state.check_body(response, target)


def make_validating_http_client(
    *, validate_streams: bool = False, require: bool = True, **kwargs: Any
) -> ValidatingClient:
    """An httpx.Client for `openai.OpenAI(http_client=...)` that validates every JSON answer.

    A violation raises `ContractViolation` inside the SDK call, failing the test there.
    text/event-stream bodies are never read by the hook; with `validate_streams=True` each
    event is validated as the SDK consumes it. `require=True` applies `require_spec()` now
    (skip, or fail in CI); with `require=False` a missing spec turns validation off.
    Other keyword arguments go to httpx.Client (timeout, transport, extra event_hooks...).
    """
    return ValidatingClient(validate_streams=validate_streams, require=require, **kwargs)


def make_validating_async_http_client(
    *, validate_streams: bool = False, require: bool = True, **kwargs: Any
) -> ValidatingAsyncClient:
    """`make_validating_http_client` for `openai.AsyncOpenAI(http_client=...)`."""
    return ValidatingAsyncClient(validate_streams=validate_streams, require=require, **kwargs)
