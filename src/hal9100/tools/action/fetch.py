"""One action call on the wire: checked destination, pinned connection, redirects followed by
hand (each one checked again), a bounded read. Every failure the model can act on comes back as
text; nothing here logs, so request headers (data.headers' secrets) are never written down."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import httpx

from hal9100.tools.action import net

if TYPE_CHECKING:
    from hal9100.config import Settings

MAX_REDIRECTS = 5
REDIRECTS = frozenset({301, 302, 303, 307, 308})


@dataclass(slots=True)
class CallRequest:
    method: str
    url: httpx.URL
    # The operation's header and cookie parameters, filled by the model.
    headers: list[tuple[str, str]]
    # data.headers: sent only to the spec server's origin, never across a redirect elsewhere.
    secret_headers: dict[str, str] = field(default_factory=dict)
    has_body: bool = False
    body: Any = None


def _origin(url: httpx.URL) -> tuple[str, str, int | None]:
    return url.scheme, url.host, url.port or net.DEFAULT_PORTS.get(url.scheme)


def _host_header(url: httpx.URL) -> str:
    host = f"[{url.host}]" if ":" in url.host else url.host
    return f"{host}:{url.port}" if url.port else host


async def send(request: CallRequest, settings: Settings, budget: float) -> str:
    """The call's outcome as the model reads it: "HTTP <status> <reason>\\n<body>" or why
    there is none."""
    shown = f"{request.method} {request.url}"
    timeout = httpx.Timeout(budget, connect=min(settings.action_connect_timeout, budget))
    try:
        async with (
            asyncio.timeout(budget),
            httpx.AsyncClient(trust_env=False, follow_redirects=False, timeout=timeout) as client,
        ):
            return await _exchange(client, request, settings)
    except (TimeoutError, httpx.TimeoutException):
        return f"The request {shown} timed out (no complete answer within {budget:g} s)."
    except httpx.ConnectError as exc:
        return f"The request {shown} failed: could not connect ({exc or type(exc).__name__})."
    except (httpx.HTTPError, httpx.InvalidURL) as exc:
        return f"The request {shown} failed: {exc or type(exc).__name__}."


async def _exchange(client: httpx.AsyncClient, request: CallRequest, settings: Settings) -> str:
    origin = _origin(request.url)
    url, method, has_body, body = request.url, request.method, request.has_body, request.body
    for hop in range(MAX_REDIRECTS + 1):
        try:
            _, addresses = await net.resolve(url, settings.action_allowed_hosts)
        except net.Refused as exc:
            if hop == 0:
                return f"The request {method} {url} was refused: {exc}"
            return f"The redirect to {url} was not followed: {exc}"
        headers = httpx.Headers(request.headers)
        if _origin(url) == origin:
            for name, value in request.secret_headers.items():
                headers[name] = value
        headers["Host"] = _host_header(url)
        # Asking for no compression keeps the read cap a cap on what is decoded too.
        headers["Accept-Encoding"] = "identity"
        # TLS verifies the real name while the connection goes to the checked address.
        extensions: dict[str, Any] = {"sni_hostname": url.host} if url.scheme == "https" else {}
        content = json.dumps(body).encode("utf-8") if has_body else None
        if has_body:
            headers["Content-Type"] = "application/json"
        response = await _connect(client, method, url, addresses, headers, content, extensions)
        try:
            location = response.headers.get("location")
            if response.status_code in REDIRECTS and location:
                if hop == MAX_REDIRECTS:
                    return (
                        f"HTTP {response.status_code} {response.reason_phrase}\nThe request "
                        f"was redirected more than {MAX_REDIRECTS} times; stopped."
                    )
                try:
                    next_url = url.join(location)
                except (httpx.InvalidURL, ValueError):
                    return f"HTTP {response.status_code}: invalid redirect location '{location}'."
                # What browsers and httpx do: 303 turns any method but HEAD into GET, and
                # 301/302 turn POST into GET; the body goes with the method.
                if (response.status_code == 303 and method != "HEAD") or (
                    response.status_code in (301, 302) and method == "POST"
                ):
                    method, has_body, body = "GET", False, None
                url = next_url
                continue
            return await _read(response, settings)
        finally:
            await response.aclose()
    raise AssertionError("unreachable: the loop returns")


async def _connect(
    client: httpx.AsyncClient,
    method: str,
    url: httpx.URL,
    addresses: list[str],
    headers: httpx.Headers,
    content: bytes | None,
    extensions: dict[str, Any],
) -> httpx.Response:
    """Send to the first of the checked addresses that accepts a connection (a refused
    connection sent nothing, so trying the next one repeats nothing)."""
    for index, address in enumerate(addresses):
        built = client.build_request(
            method,
            url.copy_with(host=address),
            headers=headers,
            content=content,
            extensions=extensions,
        )
        try:
            return await client.send(built, stream=True)
        except httpx.ConnectError:
            if index == len(addresses) - 1:
                raise
    raise httpx.ConnectError(f"no address to connect to for {url.host}")


async def _read(response: httpx.Response, settings: Settings) -> str:
    cap = settings.action_max_response_bytes
    data = bytearray()
    truncated = False
    async for chunk in response.aiter_bytes():
        room = cap - len(data)
        if len(chunk) > room:
            data += chunk[:room]
            truncated = True
            break
        data += chunk
    try:
        text = bytes(data).decode(response.charset_encoding or "utf-8", errors="replace")
    except LookupError:
        text = bytes(data).decode("utf-8", errors="replace")
    notes = []
    if truncated:
        notes.append(f"[response cut: only its first {cap} bytes were read]")
    limit = settings.action_max_output_chars
    if len(text) > limit:
        notes.append(f"[response cut: showing {limit} of {len(text)} characters]")
        text = text[:limit]
    head = f"HTTP {response.status_code} {response.reason_phrase}".rstrip()
    return "\n".join([head, text, *notes]) if notes else f"{head}\n{text}"
