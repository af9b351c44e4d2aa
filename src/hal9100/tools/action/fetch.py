"""One action call on the wire: checked destination, pinned connection, redirects followed by
hand (each one checked again), a bounded read. Every failure the model can act on comes back as
text; nothing here logs, so request headers (data.headers' secrets) are never written down."""

from __future__ import annotations

import asyncio
import codecs
import html
import json
import re
import zlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, quote_plus

import httpx

from hal9100.tools.action import net
from hal9100.tools.action.redact import REDACTED
from hal9100.tools.action.spec import IDEMPOTENT

if TYPE_CHECKING:
    from hal9100.config import Settings

MAX_REDIRECTS = 5
REDIRECTS = frozenset({301, 302, 303, 307, 308})
# Shorter header values are not scrubbed from outputs: they are not credentials, and replacing
# every "2" or "json" in an answer would garble it.
MIN_SCRUBBED = 8
# A cut answer that ends in this many or more of a secret's first characters has them redacted:
# the model can size an echoed argument to place the cut inside an echoed secret.
MIN_SECRET_TAIL = 4


def _secret_forms(secrets: Iterable[str]) -> list[str]:
    """data.headers' values (whole, or any of their words, such as the token after `Bearer`)
    as an API may echo them: plain, JSON-escaped (slashes too, as PHP writes them),
    percent-encoded, HTML-escaped. Longest first, so a longer form is replaced whole."""
    words = {
        part
        for value in secrets
        for part in (value, value.strip(), *value.split())
        if len(part) >= MIN_SCRUBBED
    }
    forms: set[str] = set()
    for word in words:
        in_json = json.dumps(word)[1:-1]
        forms.update(
            (
                word,
                in_json,
                in_json.replace("/", "\\/"),
                word.replace("/", "\\/"),
                quote(word, safe=""),
                quote_plus(word, safe=""),
                html.escape(word),
                html.escape(word, quote=False),
            )
        )
    return sorted(forms, key=len, reverse=True)


def scrub(text: str, secrets: Iterable[str], cut: bool = False) -> str:
    """`text` without data.headers' values, whatever put them there: an error quoting the
    request, an API echoing it. `cut`: the text is the start of a longer one, so an end that
    begins a secret is redacted too."""
    forms = _secret_forms(secrets)
    for form in forms:
        text = text.replace(form, REDACTED)
    if not cut:
        return text
    start = len(text)
    for form in forms:
        # The earliest start of a tail that begins this form: the longest such tail.
        i = text.find(form[0], max(0, len(text) - len(form) + 1), len(text) - MIN_SECRET_TAIL + 1)
        while i != -1 and i < start:
            if form.startswith(text[i:]):
                start = i
                break
            i = text.find(form[0], i + 1, len(text) - MIN_SECRET_TAIL + 1)
    return text[:start] + REDACTED if start < len(text) else text


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


@dataclass(slots=True)
class _Progress:
    """How far a call got, for the words of a failure."""

    # Some hop's request headers were written whole: from then on the server may act on it.
    sent: bool = False
    # The final answer once its head arrived, and its (decoded) body read so far.
    response: httpx.Response | None = None
    data: bytearray = field(default_factory=bytearray)

    async def trace(self, event: str, info: dict[str, Any]) -> None:
        # httpcore's `trace` extension: http11.send_request_headers.complete and the like.
        if event.endswith("send_request_headers.complete"):
            self.sent = True


def _origin(url: httpx.URL) -> tuple[str, str, int | None]:
    return url.scheme, url.host, url.port or net.DEFAULT_PORTS.get(url.scheme)


def _host_header(url: httpx.URL) -> str:
    host = f"[{url.host}]" if ":" in url.host else url.host
    return f"{host}:{url.port}" if url.port else host


async def send(request: CallRequest, settings: Settings, budget: float) -> str:
    """The call's outcome as the model reads it: "HTTP <status> <reason>\\n<body>" or why
    there is none."""
    timeout = httpx.Timeout(budget, connect=min(settings.action_connect_timeout, budget))
    progress = _Progress()
    try:
        async with (
            asyncio.timeout(budget),
            httpx.AsyncClient(trust_env=False, follow_redirects=False, timeout=timeout) as client,
        ):
            return await _exchange(client, request, settings, progress)
    except (TimeoutError, httpx.HTTPError, httpx.InvalidURL, httpx.StreamError, ValueError) as exc:
        return _failure(request, settings, budget, progress, exc)


def _what_failed(exc: BaseException) -> str:
    """Fixed words per kind of failure, never the exception's text: h11's quotes the header
    value it refuses (a secret maybe), and these outputs go to the model and are stored."""
    if isinstance(exc, httpx.ConnectError):
        return "could not connect (refused, unreachable, or the TLS handshake failed)"
    if isinstance(exc, httpx.WriteError):
        return "the connection failed while the request was being sent"
    if isinstance(exc, httpx.ReadError):
        return "the connection failed while the answer was awaited"
    if isinstance(exc, httpx.RemoteProtocolError):
        return "the server closed the connection or did not answer in valid HTTP"
    if isinstance(exc, httpx.LocalProtocolError):
        return "the request could not be written as valid HTTP (a header is not allowed)"
    if isinstance(exc, httpx.DecodingError):
        return "the answer could not be decoded"
    if isinstance(exc, httpx.UnsupportedProtocol | httpx.InvalidURL):
        return "its URL cannot be called"
    return f"an error of type {type(exc).__name__}"


def _failure(
    request: CallRequest,
    settings: Settings,
    budget: float,
    progress: _Progress,
    exc: BaseException,
) -> str:
    timed_out = isinstance(exc, TimeoutError | httpx.TimeoutException)
    if progress.response is not None:
        # Only the run's budget ends a body's read out here; other failures are noted by _read.
        note = (
            f"[the rest of the answer did not come within {budget:g} s]"
            if timed_out
            else f"[the rest of the answer could not be read: {_what_failed(exc)}]"
        )
        secrets = request.secret_headers.values()
        return _render(progress.response, progress.data, settings, [note], secrets, partial=True)
    shown = f"{request.method} {request.url}"
    if progress.sent and request.method not in IDEMPOTENT:
        # Calling it again could do twice what the API does once (e.g. place an order).
        what = f"no answer came within {budget:g} s" if timed_out else _what_failed(exc)
        return (
            f"Outcome unknown: the request {shown} was sent, but {what}. It may or may not "
            "have taken effect; it was not retried; check before calling it again."
        )
    if timed_out:
        return f"The request {shown} timed out (no complete answer within {budget:g} s)."
    nothing = "" if progress.sent else " Nothing was sent."
    return f"The request {shown} failed: {_what_failed(exc)}.{nothing}"


async def _exchange(
    client: httpx.AsyncClient, request: CallRequest, settings: Settings, progress: _Progress
) -> str:
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
        # Only a request: _read decodes what is sent anyway (one gzip or deflate), under the cap.
        headers["Accept-Encoding"] = "identity"
        extensions: dict[str, Any] = {"trace": progress.trace}
        if url.scheme == "https":
            # TLS verifies the real name while the connection goes to the checked address.
            extensions["sni_hostname"] = url.host
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
            return await _read(response, settings, progress, request.secret_headers.values())
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


# Content-Encodings read, and zlib's wbits for each: gzip's header and trailer, zlib's.
DECODED = {"gzip": zlib.MAX_WBITS | 16, "x-gzip": zlib.MAX_WBITS | 16, "deflate": zlib.MAX_WBITS}


class _Inflater:
    """One gzip or deflate layer, decoded only as far as the caller has room for: a few
    hundred bytes can inflate to gigabytes."""

    def __init__(self, encoding: str) -> None:
        self.encoding = encoding
        self._z = zlib.decompressobj(DECODED[encoding])
        self._raw = False
        # The input taken before the format is settled, for a raw-deflate retry to start with.
        self._taken = b""
        self._settled = False

    @property
    def eof(self) -> bool:
        return self._z.eof

    @property
    def unused_data(self) -> bytes:
        """Input after the end of the compressed stream."""
        return self._z.unused_data

    def decompress(self, data: bytes, max_length: int) -> tuple[bytes, bytes]:
        """Up to max_length (>= 1) decoded bytes, and the input left for the next call."""
        try:
            out = self._z.decompress(data, max_length)
        except zlib.error:
            if self.encoding != "deflate" or self._raw or self._settled:
                raise
            # Some servers send "deflate" as raw deflate, without zlib's header (as httpx,
            # browsers accept it).
            self._z = zlib.decompressobj(-zlib.MAX_WBITS)
            self._raw = True
            data, self._taken = self._taken + data, b""
            out = self._z.decompress(data, max_length)
        if not self._settled:
            consumed = len(data) - len(self._z.unconsumed_tail) - len(self._z.unused_data)
            self._taken += data[:consumed]
            # zlib checks its two-byte header once it has both bytes: a first chunk of one
            # byte raises nothing, and the raw retry must still be open for the next one.
            self._settled = bool(out) or len(self._taken) >= 2
            if self._settled:
                self._taken = b""
        return out, self._z.unconsumed_tail


def _charset(response: httpx.Response) -> str:
    """The answer's charset if ASCII-compatible, else UTF-8: secrets are scrubbed as ASCII
    text, and a byte cut must end the text where it ends the bytes (UTF-16 or UTF-7 would
    hide a secret from both)."""
    try:
        name = codecs.lookup(response.charset_encoding or "utf-8").name
    except LookupError:
        return "utf-8"
    if name in ("utf-8", "ascii") or re.fullmatch(r"iso8859-\d+|cp125\d", name):
        return name
    return "utf-8"


def _has_body(response: httpx.Response) -> bool:
    return not (
        response.request.method == "HEAD"
        or response.status_code in (204, 304)
        or response.headers.get("content-length") == "0"
    )


async def _read(
    response: httpx.Response, settings: Settings, progress: _Progress, secrets: Iterable[str]
) -> str:
    cap = settings.action_max_response_bytes
    # Compressed input can inflate to little (empty deflate blocks without end): it is bounded
    # too, or a server could keep the call reading until its timeout.
    raw_cap = 2 * cap + 64 * 1024
    progress.response = response
    data = progress.data = bytearray()
    encodings = [
        e.strip().lower()
        for e in response.headers.get_list("content-encoding", split_commas=True)
        if e.strip() and e.strip().lower() != "identity"
    ]
    if (len(encodings) > 1 or (encodings and encodings[0] not in DECODED)) and _has_body(response):
        # Decided from the head alone: a server that sends such a head and then stalls is
        # not waited for.
        return (
            f"{_head(response)}\nThe answer's body was not read: its Content-Encoding is "
            f"'{', '.join(encodings)}', and only identity or one gzip or deflate layer is read."
        )
    inflater = _Inflater(encodings[0]) if len(encodings) == 1 else None
    truncated = False
    partial = False
    raw = 0
    notes: list[str] = []
    try:
        # Raw bytes: httpx's own decoding would inflate each chunk whole, and stack layers.
        async for chunk in response.aiter_raw():
            if not chunk:
                continue
            if inflater is None:
                room = cap - len(data)
                data += chunk[:room]
                if len(chunk) > room:
                    truncated = True
                    break
                continue
            pending = chunk[: raw_cap - raw]
            raw += len(pending)
            while pending and not inflater.eof:
                room = cap - len(data)
                # One byte more than there is room for tells a cut answer from one that fits.
                out, pending = inflater.decompress(pending, room + 1)
                data += out[:room]
                if len(out) > room:
                    truncated = True
                    break
            if truncated or inflater.eof:
                break
            if raw >= raw_cap:
                partial = True
                notes.append(
                    f"[response cut: only its first {raw_cap} {inflater.encoding} bytes were "
                    f"read, which decode to {len(data)} bytes]"
                )
                break
        if inflater is not None and inflater.eof and inflater.unused_data:
            notes.append(
                f"[data after the end of the answer's {inflater.encoding} stream was not read]"
            )
    except zlib.error:
        partial = True
        encoding = inflater.encoding if inflater is not None else "compressed"
        notes.append(f"[the rest of the answer could not be read: its {encoding} data is invalid]")
    except httpx.TimeoutException:
        partial = True
        notes.append("[the rest of the answer did not come in time]")
    except httpx.HTTPError as exc:
        partial = True
        notes.append(f"[the rest of the answer could not be read: {_what_failed(exc)}]")
    return _render(
        response,
        data,
        settings,
        notes,
        secrets,
        cut=cap if truncated else None,
        partial=partial or truncated,
    )


def _head(response: httpx.Response) -> str:
    return f"HTTP {response.status_code} {response.reason_phrase}".rstrip()


def _render(
    response: httpx.Response,
    data: bytearray,
    settings: Settings,
    notes: list[str],
    secrets: Iterable[str],
    cut: int | None = None,
    partial: bool = False,
) -> str:
    """The answer's head and body text, with notes on what was left out and why. Secrets are
    scrubbed from the whole text before it is cut to the output's limit (a cut secret would
    no longer match); a body read only in part may end inside one, and that end goes too."""
    # NUL goes (no database stores it): UTF-16 text read as UTF-8 would otherwise keep a
    # secret it echoes with a NUL between its characters, past the scrub.
    decoded = bytes(data).decode(_charset(response), errors="replace").replace("\x00", "")
    text = scrub(decoded, secrets, cut=partial)
    shown = []
    if cut is not None:
        shown.append(f"[response cut: only its first {cut} bytes were read]")
    limit = settings.action_max_output_chars
    if len(text) > limit:
        shown.append(f"[response cut: showing {limit} of {len(text)} characters]")
        text = text[:limit]
    shown.extend(notes)
    head = _head(response)
    return "\n".join([head, text, *shown]) if shown else f"{head}\n{text}"
