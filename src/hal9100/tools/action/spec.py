"""An action tool's OpenAPI 3.x spec: checked when a client stores it, turned into the functions
the model sees and the HTTP requests their calls make.

Nothing here fetches or reads anything: a `$ref` must point inside the spec (`#/...`), and the
validator runs without URL or file handlers. `$ref`s reachable from an operation's parameters
or JSON request body are inlined into the function's parameters; a cycle among them is refused
(a JSON schema for the model cannot hold one without `$ref`s, and cutting it at a depth would
describe a body the API may not accept). Cycles elsewhere (e.g. in responses) are fine.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import hashlib
import json
import math
import re
import threading
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, ParamSpec, TypeVar
from urllib.parse import unquote

import httpx
import yaml

# At import, not at the first check: importing the validator in a parsing thread would take
# the import lock while the event loop's thread may need it.
from jsonschema_path import SchemaPath
from openapi_spec_validator.shortcuts import get_validator_cls
from openapi_spec_validator.validation.exceptions import (
    OpenAPIValidationError,
    ValidatorDetectError,
)

from hal9100.tools.base import FunctionSpec

FUNCTION_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
# RFC 9110 token, and a field value without control characters (no CR/LF/NUL) and without
# leading or trailing spaces or tabs, which h11 refuses (quoting the value, a secret maybe, in
# its error).
HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
HEADER_VALUE = re.compile(r"^(?:[\x21-\x7e](?:[\t\x20-\x7e]*[\x21-\x7e])?)?$")
HEADER_VALUE_RULE = (
    "printable ASCII only; no CR, LF or other control characters, and no leading or "
    "trailing spaces or tabs"
)
# Headers this tool writes itself: a client-set value would break the request's framing or
# the pinned connection's Host.
RESERVED_HEADERS = frozenset({"host", "content-length", "transfer-encoding", "connection"})
# TRACE is left out: its answer echoes the request, data.headers' secrets included.
METHODS = ("get", "put", "post", "delete", "options", "head", "patch")
# RFC 9110 section 9.2.2.
IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE"})
# OpenAPI: header parameters with these names "SHALL be ignored" (the request sets them).
IGNORED_HEADER_PARAMS = frozenset({"accept", "content-type", "authorization"})
# Bounds on a spec once loaded and on a function's parameters once `$ref`s are inlined: a
# YAML alias bomb or a ref graph that doubles at each level stays small on the wire.
MAX_NODES = 200_000
MAX_DEPTH = 64
BODY = "body"
# OpenAI's chat completions take at most 128 tools; each operation is one.
MAX_OPERATIONS = 128
# The functions one chat-completions request may offer across all of a run's tools (OpenAI's
# limit, which OpenAI-compatible servers copy).
MAX_FUNCTIONS = 128
SAFE_LOADER: type[yaml.SafeLoader] | type[yaml.CSafeLoader] = getattr(
    yaml, "CSafeLoader", yaml.SafeLoader
)


class ActionSpecError(ValueError):
    """Why a spec (or an action tool's headers) cannot be used; the message is shown to the
    client as the 400's reason."""


@dataclass(frozen=True, slots=True)
class Parameter:
    name: str
    location: str  # path, query, header or cookie
    required: bool
    style: str
    explode: bool
    # Described by `content` rather than `schema`: the value is sent as JSON text.
    as_json: bool


@dataclass(frozen=True, slots=True)
class Operation:
    name: str
    method: str
    base_url: str
    path: str
    parameters: tuple[Parameter, ...]
    # None: the operation takes no JSON body.
    body_required: bool | None
    function: FunctionSpec


@dataclass(slots=True)
class ParsedSpec:
    operations: dict[str, Operation] = field(default_factory=dict)


def load(raw: str | dict[str, Any], max_bytes: int | None) -> dict[str, Any]:
    """The spec as plain JSON data: a JSON or YAML text (YAML's safe loader: no tags, no
    objects), or an object already."""
    if isinstance(raw, str):
        size = len(raw.encode("utf-8"))
        if max_bytes is not None and size > max_bytes:
            raise ActionSpecError(f"the spec is {size} bytes; at most {max_bytes} are accepted")
        try:
            data: Any = json.loads(raw)
        except ValueError:
            try:
                # libyaml's parser when PyYAML was built with it: the pure-Python one takes
                # seconds for a spec of a megabyte, on the event loop.
                data = yaml.load(raw, Loader=SAFE_LOADER)
            except yaml.YAMLError as exc:
                reason = " ".join(str(exc).split())
                raise ActionSpecError(f"the spec is neither JSON nor YAML: {reason}") from None
            except RecursionError:
                raise ActionSpecError("the spec is nested too deeply") from None
        except RecursionError:
            raise ActionSpecError("the spec is nested too deeply") from None
    else:
        data = raw
    if not isinstance(data, dict):
        raise ActionSpecError("the spec must be an OpenAPI document (a JSON or YAML object)")
    _check_shape(data)
    # YAML may give dates and integer keys; the validator and our output want JSON.
    data = json.loads(json.dumps(data, default=str))
    if not isinstance(raw, str) and max_bytes is not None:
        size = len(json.dumps(data, separators=(",", ":")).encode("utf-8"))
        if size > max_bytes:
            raise ActionSpecError(f"the spec is {size} bytes; at most {max_bytes} are accepted")
    return data


def _check_shape(data: Any) -> None:
    """Bounded walk (no recursion: a YAML alias bomb is a small graph of shared nodes that
    would expand beyond memory)."""
    stack: list[tuple[Any, int]] = [(data, 1)]
    nodes = 0
    while stack:
        item, depth = stack.pop()
        nodes += 1
        if nodes > MAX_NODES:
            raise ActionSpecError(f"the spec has more than {MAX_NODES} nodes")
        if isinstance(item, dict | list):
            if depth > MAX_DEPTH:
                raise ActionSpecError(f"the spec is nested more than {MAX_DEPTH} levels deep")
            children = item.values() if isinstance(item, dict) else item
            stack.extend((child, depth + 1) for child in children)
            if isinstance(item, dict):
                ref = item.get("$ref")
                if isinstance(ref, str) and not ref.startswith("#"):
                    raise ActionSpecError(
                        f"$ref '{ref[:200]}' is not local: only references inside the spec "
                        "('#/...') are followed, never a URL or a file"
                    )
        elif isinstance(item, float) and not math.isfinite(item):
            raise ActionSpecError("numbers must be finite (NaN and Infinity are not JSON)")


def _validate(data: dict[str, Any]) -> None:
    version = data.get("openapi")
    if "swagger" in data or (isinstance(version, str) and version.startswith("2")):
        raise ActionSpecError(
            "Swagger / OpenAPI 2.0 is not supported: convert the spec to OpenAPI 3.x"
        )
    if not isinstance(version, str) or not re.match(r"^3\.\d+(\.\d+)?", version):
        raise ActionSpecError("the spec must be OpenAPI 3.x: its 'openapi' field is missing")
    try:
        cls = get_validator_cls(data)
    except ValidatorDetectError:
        raise ActionSpecError(f"OpenAPI version '{version}' is not supported") from None
    # No handlers: nothing outside the document is ever fetched or read.
    path = SchemaPath.from_dict(data, handlers={})
    try:
        cls(path).validate()
    except OpenAPIValidationError as exc:
        where = "/".join(str(p) for p in exc.path) if exc.path else ""
        reason = exc.message.splitlines()[0] if exc.message else "invalid"
        raise ActionSpecError(
            f"not a valid OpenAPI {version} document: {reason}"
            + (f" (at {where})" if where else "")
        ) from None
    except ActionSpecError:
        raise
    except Exception as exc:  # the validator's reference resolution raises its own types
        reason = str(exc).splitlines()[0][:300] if str(exc) else type(exc).__name__
        raise ActionSpecError(f"not a valid OpenAPI {version} document: {reason}") from None


def _pointer(root: dict[str, Any], ref: str) -> Any:
    node: Any = root
    if ref in ("#", "#/"):
        return root
    for raw in ref[2:].split("/"):
        part = unquote(raw).replace("~1", "/").replace("~0", "~")
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            raise ActionSpecError(f"$ref '{ref[:200]}' points to nothing in the spec")
    return node


class _Inliner:
    def __init__(self, root: dict[str, Any]) -> None:
        self.root = root
        self.nodes = 0

    def deref(self, node: Any) -> Any:
        """A parameter, request body or media object behind its (chain of) `$ref`s."""
        seen: set[str] = set()
        while isinstance(node, dict) and isinstance(node.get("$ref"), str):
            ref = node["$ref"]
            if ref in seen:
                raise ActionSpecError(f"cyclic $ref '{ref[:200]}'")
            seen.add(ref)
            node = _pointer(self.root, ref)
        return node

    def inline(self, node: Any, stack: tuple[str, ...] = (), depth: int = 1) -> Any:
        self.nodes += 1
        if self.nodes > MAX_NODES:
            raise ActionSpecError(
                f"an operation's parameters exceed {MAX_NODES} nodes once $refs are inlined"
            )
        if depth > MAX_DEPTH:
            raise ActionSpecError(
                f"an operation's parameters nest more than {MAX_DEPTH} levels once $refs "
                "are inlined"
            )
        if isinstance(node, list):
            return [self.inline(item, stack, depth + 1) for item in node]
        if not isinstance(node, dict):
            return node
        ref = node.get("$ref")
        if isinstance(ref, str):
            if ref in stack:
                raise ActionSpecError(
                    f"cyclic $ref '{ref[:200]}' in an operation's parameters or request body: "
                    "recursive schemas cannot be inlined into a function's parameters"
                )
            resolved = self.inline(_pointer(self.root, ref), (*stack, ref), depth)
            siblings = {k: v for k, v in node.items() if k != "$ref"}
            if siblings and isinstance(resolved, dict):
                # OpenAPI 3.1 lets a $ref carry keywords beside it; they refine the target.
                return {**resolved, **self.inline(siblings, stack, depth)}
            return resolved
        return {key: self.inline(value, stack, depth + 1) for key, value in node.items()}


def _server_url(servers: Any, where: str) -> str:
    if not isinstance(servers, list) or not servers or not isinstance(servers[0], dict):
        raise ActionSpecError(f"{where} has no servers[0].url: the API's absolute URL is needed")
    server = servers[0]
    url = str(server.get("url", ""))
    variables = server.get("variables") or {}
    for name, variable in variables.items():
        default = variable.get("default") if isinstance(variable, dict) else None
        url = url.replace("{" + name + "}", str(default if default is not None else ""))
    if "{" in url:
        raise ActionSpecError(f"{where}: servers[0].url '{url}' has a variable with no default")
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, ValueError) as exc:
        raise ActionSpecError(f"{where}: servers[0].url '{url}' is not a URL: {exc}") from None
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise ActionSpecError(
            f"{where}: servers[0].url '{url}' must be an absolute http:// or https:// URL"
        )
    if parsed.query or parsed.fragment:
        raise ActionSpecError(f"{where}: servers[0].url '{url}' must not have a query or fragment")
    return url.rstrip("/")


def _derived_name(method: str, path: str) -> str:
    name = re.sub(r"[^a-zA-Z0-9_-]+", "_", f"{method}_{path}").strip("_")
    return re.sub(r"_+", "_", name)[:64]


def _parameter(raw: dict[str, Any], inliner: _Inliner, where: str) -> tuple[Parameter, Any]:
    name = raw.get("name")
    location = raw.get("in")
    if not isinstance(name, str) or location not in ("path", "query", "header", "cookie"):
        raise ActionSpecError(f"{where}: a parameter needs a name and 'in'")
    schema: Any = raw.get("schema")
    as_json = False
    if schema is None and isinstance(raw.get("content"), dict) and raw["content"]:
        media = inliner.deref(next(iter(raw["content"].values())))
        schema = media.get("schema") if isinstance(media, dict) else None
        as_json = True
    schema = inliner.inline(schema) if isinstance(schema, dict) else {}
    schema = dict(schema)
    description = raw.get("description")
    if isinstance(description, str) and description and "description" not in schema:
        schema["description"] = description
    default_style = {"path": "simple", "header": "simple", "query": "form", "cookie": "form"}
    style = str(raw.get("style") or default_style[location])
    explode = raw.get("explode")
    parameter = Parameter(
        name=name,
        location=location,
        required=location == "path" or bool(raw.get("required")),
        style=style,
        explode=bool(explode) if explode is not None else style == "form",
        as_json=as_json,
    )
    return parameter, schema


def _operation(
    root: dict[str, Any],
    inliner: _Inliner,
    path: str,
    method: str,
    item: dict[str, Any],
    op: dict[str, Any],
    base_url: str,
) -> Operation:
    where = f"{method.upper()} {path}"
    op_id = op.get("operationId")
    if op_id is None:
        name = _derived_name(method, path)
    else:
        name = str(op_id)
    if not FUNCTION_NAME.match(name):
        raise ActionSpecError(
            f"{where}: function name '{name[:100]}' (its operationId) must match "
            "^[a-zA-Z0-9_-]{1,64}$"
        )
    if op.get("servers"):
        base_url = _server_url(op["servers"], where)
    elif item.get("servers"):
        base_url = _server_url(item["servers"], path)

    # Operation parameters override path-item ones with the same name and location.
    merged: dict[tuple[str, str], dict[str, Any]] = {}
    for raw in [*(item.get("parameters") or []), *(op.get("parameters") or [])]:
        resolved = inliner.deref(raw)
        if isinstance(resolved, dict):
            merged[(str(resolved.get("name")), str(resolved.get("in")))] = resolved
    properties: dict[str, Any] = {}
    required: list[str] = []
    parameters: list[Parameter] = []
    for (pname, location), raw in merged.items():
        if location == "header" and pname.lower() in IGNORED_HEADER_PARAMS:
            continue
        if location == "header" and pname.lower() in RESERVED_HEADERS:
            # The model would otherwise set the framing of the request (Content-Length) or
            # the virtual host its credentials go to (Host).
            raise ActionSpecError(
                f"{where}: header parameter '{pname}' is set by the server, not by a caller"
            )
        parameter, schema = _parameter(raw, inliner, where)
        if pname in properties or pname == BODY:
            raise ActionSpecError(
                f"{where}: parameter '{pname}' appears twice (or is named '{BODY}', which "
                "holds the request body): each argument of a function needs its own name"
            )
        if location == "path" and "{" + pname + "}" not in path:
            raise ActionSpecError(f"{where}: path parameter '{pname}' is not in the path")
        properties[pname] = schema
        if parameter.required:
            required.append(pname)
        parameters.append(parameter)
    for template in re.findall(r"\{([^}]*)\}", path):
        if not any(p.location == "path" and p.name == template for p in parameters):
            raise ActionSpecError(f"{where}: path variable '{{{template}}}' is not a parameter")

    body_required: bool | None = None
    body = inliner.deref(op.get("requestBody"))
    if isinstance(body, dict):
        content = body.get("content") or {}
        media_type = next(
            (
                m
                for m in content
                if m.split(";")[0].strip().lower() == "application/json"
                or m.split(";")[0].strip().lower().endswith("+json")
            ),
            None,
        )
        if media_type is None:
            raise ActionSpecError(
                f"{where}: the request body's media types ({', '.join(content) or 'none'}) "
                "are not supported: only application/json bodies can be sent"
            )
        media = inliner.deref(content[media_type])
        schema = media.get("schema") if isinstance(media, dict) else None
        properties[BODY] = inliner.inline(schema) if isinstance(schema, dict) else {}
        body_required = bool(body.get("required"))
        if body_required:
            required.append(BODY)

    text = [s for s in (op.get("summary"), op.get("description")) if isinstance(s, str) and s]
    parameters_schema: dict[str, Any] = {"type": "object", "properties": properties}
    if required:
        parameters_schema["required"] = required
    return Operation(
        name=name,
        method=method.upper(),
        base_url=base_url,
        path=path,
        parameters=tuple(parameters),
        body_required=body_required,
        function=FunctionSpec(
            name=name,
            description="\n\n".join(text) or None,
            parameters=parameters_schema,
        ),
    )


def parse(raw: str | dict[str, Any], max_bytes: int | None = None) -> ParsedSpec:
    """Check a spec and describe its operations; raises ActionSpecError with the reason."""
    data = load(raw, max_bytes)
    _validate(data)
    base_url = _server_url(data.get("servers"), "the spec")
    inliner = _Inliner(data)
    parsed = ParsedSpec()
    for path, item in (data.get("paths") or {}).items():
        item = inliner.deref(item)
        if not isinstance(item, dict):
            continue
        if isinstance(item.get("trace"), dict):
            raise ActionSpecError(
                f"TRACE {path}: TRACE operations are not supported (the answer echoes the "
                "request, data.headers included)"
            )
        for method in METHODS:
            op = item.get(method)
            if not isinstance(op, dict):
                continue
            operation = _operation(data, inliner, path, method, item, op, base_url)
            if operation.name in parsed.operations:
                raise ActionSpecError(
                    f"{operation.method} {path}: function name '{operation.name}' is used by "
                    "another operation of the spec"
                )
            parsed.operations[operation.name] = operation
            if len(parsed.operations) > MAX_OPERATIONS:
                raise ActionSpecError(
                    f"the spec has more than {MAX_OPERATIONS} operations (each one is a "
                    "function, and a model takes at most 128)"
                )
    if not parsed.operations:
        raise ActionSpecError("the spec has no operations (paths) to call")
    return parsed


def check_headers(headers: dict[str, str]) -> dict[str, str]:
    for name, value in headers.items():
        if not HEADER_NAME.match(name):
            raise ActionSpecError(f"header name '{name[:100]}' is not a valid HTTP header name")
        if name.lower() in RESERVED_HEADERS:
            raise ActionSpecError(f"header '{name}' is set by the server and cannot be given")
        if not HEADER_VALUE.match(value):
            # The value itself is never echoed: it is likely a secret.
            raise ActionSpecError(
                f"the value of header '{name}' is not a valid HTTP header value "
                f"({HEADER_VALUE_RULE})"
            )
    return headers


@functools.cache
def _max_spec_bytes() -> int:
    # Request validation has no access to the app's settings object; the environment that
    # built it is the same one.
    from hal9100.config import Settings

    return Settings().action_max_spec_bytes


def check_spec_size(value: str | dict[str, Any]) -> str | dict[str, Any]:
    """A tool's openapi_spec within HAL9100_ACTION_MAX_SPEC_BYTES, or ActionSpecError: the
    cheap part of its check, made while the request is read."""
    size = spec_bytes(value)
    limit = _max_spec_bytes()
    if size > limit:
        raise ActionSpecError(f"the spec is {size} bytes; at most {limit} are accepted")
    return value


def check_spec(value: str | dict[str, Any]) -> ParsedSpec:
    """A tool's openapi_spec as a client sends it: its parse, or ActionSpecError. Seconds for
    a spec of a megabyte: callers on the event loop run it with `parse_in_thread`."""
    check_spec_size(value)
    # Cached: the request's check of function names across its tools, its tool_choice, and
    # the engine at the run's first turn read the same parse. The size is the only check
    # that depends on the limit, so a parse cached without it serves here too.
    return parse_cached(value)


def spec_bytes(raw: Any) -> int:
    """A spec's size as HAL9100_ACTION_MAX_SPEC_BYTES counts it: its text, or its object as
    compact JSON."""
    if isinstance(raw, str):
        return len(raw.encode("utf-8"))
    return len(json.dumps(raw, separators=(",", ":"), default=str).encode("utf-8"))


def over_total_spec_bytes(tools: Any) -> tuple[int, int, int] | None:
    """For a request's `tools` as sent (before any spec is parsed): the index of the action
    tool whose spec takes the specs' total size past HAL9100_ACTION_MAX_SPEC_BYTES, with that
    total and the limit; None when they fit. Checked while the request is read, before its
    specs are parsed (seconds for a megabyte), so the limit bounds that work for the whole
    request, not for one spec."""
    if not isinstance(tools, list):
        return None
    limit = _max_spec_bytes()
    total = 0
    for index, tool in enumerate(tools):
        if not isinstance(tool, dict) or tool.get("type") != "action":
            continue
        data = tool.get("data")
        raw = data.get("openapi_spec") if isinstance(data, dict) else None
        if not isinstance(raw, str | dict):
            continue
        size = spec_bytes(raw)
        if size > limit:
            # Its own check refuses it (naming its openapi_spec) before parsing it, and the
            # specs before it fit in the limit together.
            return None
        total += size
        if total > limit:
            return index, total, limit
    return None


def function_names(tools: list[dict[str, Any]]) -> set[str]:
    """The functions stored tools (plain data) offer the model: function tools' names and
    action tools' operations."""
    names: set[str] = set()
    for tool in tools:
        if tool.get("type") == "function":
            names.add(str((tool.get("function") or {}).get("name")))
        elif tool.get("type") == "action":
            try:
                parsed = parse_cached((tool.get("data") or {}).get("openapi_spec") or {})
            except ActionSpecError:
                # Cannot happen to a spec that was accepted; it then offers nothing.
                continue
            names.update(parsed.operations)
    return names


# Parsed specs by content hash: the engine builds a run's tools at every turn, and parsing
# (validation included) costs milliseconds to seconds for a large spec.
CACHE_SIZE = 64
_cache: OrderedDict[str, ParsedSpec] = OrderedDict()
_cache_lock = threading.Lock()


class _Flight:
    """One parse in progress, which other callers of the same spec wait for: after a restart,
    every run of an assistant would otherwise parse its (uncached) spec at once."""

    def __init__(self) -> None:
        self.done = threading.Event()
        self.parsed: ParsedSpec | None = None
        self.error: ActionSpecError | None = None


_flights: dict[str, _Flight] = {}


def spec_key(raw: str | dict[str, Any]) -> str:
    text = raw if isinstance(raw, str) else json.dumps(raw, sort_keys=True, separators=(",", ":"))
    prefix = "s" if isinstance(raw, str) else "o"
    return hashlib.sha256(f"{prefix}:{text}".encode()).hexdigest()


def parse_cached(raw: str | dict[str, Any]) -> ParsedSpec:
    """`parse(raw)` from the cache, or parsed once however many threads ask for it at once.
    Seconds for a spec of a megabyte: callers on the event loop use `parse_in_thread`."""
    key = spec_key(raw)
    with _cache_lock:
        parsed = _cache.get(key)
        if parsed is not None:
            _cache.move_to_end(key)
            return parsed
        flight = _flights.get(key)
        leader = flight is None
        if flight is None:
            flight = _flights[key] = _Flight()
    if not leader:
        flight.done.wait()
        if flight.parsed is not None:
            return flight.parsed
        if flight.error is not None:
            raise ActionSpecError(str(flight.error))
        # The parse failed some other way (its leader got the exception): this call tries.
        return parse_cached(raw)
    try:
        # The size limit was applied when the spec was stored; a lower one set since then does
        # not break existing assistants.
        flight.parsed = parse(raw)
        _remember(key, flight.parsed)
        return flight.parsed
    except ActionSpecError as exc:
        flight.error = exc
        raise
    finally:
        with _cache_lock:
            del _flights[key]
        flight.done.set()


def all_parsed(tools: list[dict[str, Any]]) -> bool:
    """Whether every action spec among stored `tools` is in the cache (reading their
    functions then takes no parse)."""
    with _cache_lock:
        return all(
            spec_key((tool.get("data") or {}).get("openapi_spec") or {}) in _cache
            for tool in tools
            if tool.get("type") == "action"
        )


def _remember(key: str, parsed: ParsedSpec) -> None:
    with _cache_lock:
        _cache[key] = parsed
        while len(_cache) > CACHE_SIZE:
            _cache.popitem(last=False)


# Parsing's own threads: asyncio's default executor (a few threads on a small machine) also
# resolves names for new connections and does the local file storage's I/O, which a few
# parses of a megabyte each would hold up for seconds.
PARSE_THREADS = 2
_parsers = ThreadPoolExecutor(max_workers=PARSE_THREADS, thread_name_prefix="action-spec")

_P = ParamSpec("_P")
_T = TypeVar("_T")


async def parse_in_thread(func: Callable[_P, _T], *args: _P.args, **kwargs: _P.kwargs) -> _T:
    """`func(*args, **kwargs)` in a spec-parsing thread (as asyncio.to_thread, context
    variables included): for any call that may parse a spec, e.g. building a run's tools."""
    call = functools.partial(contextvars.copy_context().run, func, *args, **kwargs)
    return await asyncio.get_running_loop().run_in_executor(_parsers, call)
