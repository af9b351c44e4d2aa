r"""A deterministic LLM server for tests and benchmarks, speaking both the OpenAI
chat-completions protocol (`POST /v1/chat/completions`) and Anthropic's Messages protocol
(`POST /v1/messages`), streaming (SSE) or not.

What the "model" does is scripted by directives in the text of the LAST user message of the
conversation, so tests that drive HAL-9100 through its own API can steer it. A directive is
`[[name]]`, `[[name:value]]` or `[[name@ROUND:value]]`; directives are stripped from the text
before it is echoed, and TEXT values cannot contain "]]". Without directives the model echoes.
In the Anthropic protocol the last user message is the last user turn with text (a turn of
only tool results answers the model), and consecutive user messages count as one turn.

Replies
  (default)                 "Echo: <last user text without directives>", one word per chunk.
                            After tool results (see rounds): "Tool results: <out1>; <out2>".
                            With response_format json_object/json_schema: {"echo": "<that text>"}
                            (Anthropic protocol: when the system prompt contains "Respond with
                            a single valid JSON object", as AnthropicBackend sends for it).
  [[reply:TEXT]]            Answer TEXT (instead of the default) whenever not calling tools.
  [[reply@N:TEXT]]          Answer TEXT in round N only. In a round that also calls tools,
                            TEXT is streamed before the tool calls.
  [[tokens:N]]              Answer "token1 token2 ... tokenN" (N chunks).
  [[chunks:JSON ]]          Answer exactly these chunks, a JSON array of strings (so JSON
                            escapes reach the client as sent: a lone surrogate "\ud800", NUL
                            "\u0000", or an emoji cut in two: ["a\ud83d", "\ude00b"]). Leave a
                            space before the closing "]]" (the array ends in "]").
  [[escapes]]               Decode \uXXXX escapes in the reply TEXT and in tool-call names and
                            arguments before sending, so the model can send lone surrogates
                            and NUL anywhere (they go out as JSON escapes).

Tool calls
  [[call:NAME {json}]]      Call NAME with these arguments (sent verbatim, even if invalid
                            JSON; default {}). Several => parallel calls in one completion.
  [[call@N:NAME {json}]]    Call NAME in round N.
  [[rounds:K]]              Repeat the round-0 calls in rounds 0..K-1, then answer.
  A round is the number of assistant tool-call turns after the last user message: 0 for a
  new user message, 1 after the first tool results, and so on. `[[call:...]]` alone calls in
  round 0 and answers with the tool outputs in round 1, so a tool loop terminates.

Quirks of real servers (OpenAI protocol unless noted), as [[quirk:a,b]] or repeated directives
  same_id                   Parallel calls share one id.
  no_id                     Tool-call fragments carry no id.
  repeat_id                 The id (and type) is repeated in every fragment.
  no_index                  Tool-call fragments carry no index.
  legacy_function_call      delta.function_call (first call only), finish "function_call".
  dup_function_call         As llama-cpp-python's chatml-function-calling streams: every
                            tool-call fragment carries the id and name and is also sent as
                            delta.function_call in the same chunk; a last fragment carries
                            the name and empty arguments.
  empty_stream_auto         As llama-cpp-python's chatml-function-calling: a streamed request
                            offering tools with tool_choice auto (or unset) gets HTTP 200 and
                            an event stream with no event at all, then closes the connection
                            it advertised as keep-alive (the same request unstreamed is
                            answered).
  ignore_stream             (Both protocols) answer the complete, non-streamed object
                            (chat.completion / message JSON) even when asked to stream.
  no_usage                  No usage chunk even when stream_options.include_usage is set.
  no_finish                 finish_reason is never sent.
  reject_stream_options     Answer 400 "Unknown parameter: stream_options" when the request
                            has stream_options (older TGI, some proxies).
  reject_temperature        (Both protocols) answer 400 "temperature is deprecated for this
                            model" when the request sets temperature (recent Claude models).

Failures and timing
  [[fail:STATUS]]           Answer HTTP STATUS with a JSON error body carrying a message.
  [[fail_times:K:STATUS]]   Fail the first K requests for the same conversation, then
                            succeed (for retries). STATUS defaults to 500. `reset()` clears
                            the counters; use distinct message text per test.
  [[hang]]                  Never answer (until the client disconnects or the server stops).
  [[drop]]                  Stream a few chunks, then close the connection abruptly.
  [[stream_error]]          Stream a few chunks, then an in-stream error event
                            (OpenAI: data {"error": {... "code": 500}}; Anthropic:
                            event: error, overloaded_error).
  [[garbage:KIND]]          Answer HTTP 200 with something that is no completion, as a proxy
                            or a misconfigured server does. KIND: html (an HTML error page,
                            text/html), json (a JSON object that is no completion), sse (an
                            event stream of JSON objects that are no chunks). Both protocols.
  [[slow:MS]]               Wait MS milliseconds between chunks.
  [[latency:MS]]            Wait MS milliseconds before answering (plus `ScriptedLLM(latency=)`).

Embeddings (`POST /v1/embeddings`)
  Each input gets `embedding_of(text)` (16 numbers from its SHA-256), answered in reverse
  order (clients must follow `index`). Directives anywhere in the inputs: [[fail:STATUS]],
  [[garbage:html|json|sse]] as above, and [[garbage:count]] (one embedding missing),
  [[garbage:nan]] (a NaN), [[garbage:text]] (strings for numbers), [[garbage:dims]] (one
  embedding of another width).

Usage: prompt_tokens = whitespace-separated words in all message texts (system, tool outputs
and tool-call arguments included, tool definitions not); completion_tokens = number of chunks
carrying reply words or tool-call fragments. A reply longer than max_tokens
(max_completion_tokens) words is cut there and finishes with "length" / "max_tokens".

Python API
  llm = ScriptedLLM(latency=0.0).start()   # or `with ScriptedLLM() as llm:`; llm.stop()
  llm.base_url             "http://127.0.0.1:PORT/v1", for OpenAI clients
  llm.anthropic_base_url   "http://127.0.0.1:PORT", for Anthropic clients
  llm.requests             JSON bodies received, oldest first (a snapshot; thread-safe)
  llm.recorded             RecordedRequest(path, headers, body) for each request
  llm.last_request         the newest body, or None
  llm.reset()              forget requests and [[fail_times]] counters
  llm.latency              seconds before every answer; may be changed while running

Run standalone: `python tests/scripted_llm.py --port 8001 [--latency 0.2]`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import itertools
import json
import math
import re
import threading
import time
from dataclasses import dataclass, field
from typing import Any

DIRECTIVE = re.compile(r"\[\[(.*?)\]\]", re.S)
_DIRECTIVE_NAME = re.compile(r"^\s*([a-z_]+)\s*(?:@\s*(\d+))?\s*$")
_CHUNK = re.compile(r"\s*\S+")
_ESCAPE = re.compile(r"\\u([0-9a-fA-F]{4})")
_ANTHROPIC_JSON_INSTRUCTION = "Respond with a single valid JSON object"
# What a reverse proxy answers when the model server behind it is down.
GARBAGE_HTML = (
    b"<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n"
    b"<center><h1>502 Bad Gateway</h1></center>\r\n<hr><center>nginx</center>\r\n"
    b"</body>\r\n</html>\r\n"
)


# --------------------------------------------------------------------------- the script


@dataclass
class Script:
    reply: str | None = None
    replies_at: dict[int, str] = field(default_factory=dict)
    calls_at: dict[int, list[tuple[str, str]]] = field(default_factory=dict)
    rounds: int = 1
    tokens: int | None = None
    chunks: list[str] | None = None
    escapes: bool = False
    garbage: str | None = None
    quirks: set[str] = field(default_factory=set)
    fail: int | None = None
    fail_times: tuple[int, int] | None = None
    hang: bool = False
    drop: bool = False
    stream_error: bool = False
    slow: float = 0.0
    latency: float = 0.0

    def calls_for(self, round_: int) -> list[tuple[str, str]]:
        if round_ in self.calls_at:
            return self.calls_at[round_]
        if round_ < self.rounds:
            return self.calls_at.get(0, [])
        return []


def parse_script(text: str) -> Script:
    script = Script()
    for match in DIRECTIVE.finditer(text):
        head, _, value = match.group(1).partition(":")
        name_match = _DIRECTIVE_NAME.match(head)
        if not name_match:
            continue
        name, round_text = name_match.group(1), name_match.group(2)
        round_ = int(round_text) if round_text else None
        value = value.strip()
        if name == "reply":
            if round_ is None:
                script.reply = value
            else:
                script.replies_at[round_] = value
        elif name == "call":
            tool, _, arguments = value.partition(" ")
            if not arguments.strip():
                tool, _, arguments = value.partition("\n")
            script.calls_at.setdefault(round_ or 0, []).append(
                (tool.strip(), arguments.strip() or "{}")
            )
        elif name == "rounds":
            script.rounds = _int(value, 1)
        elif name == "tokens":
            script.tokens = _int(value, 0)
        elif name == "chunks":
            with contextlib.suppress(ValueError):
                chunks = json.loads(value)
                if isinstance(chunks, list) and all(isinstance(c, str) for c in chunks):
                    script.chunks = chunks
        elif name == "escapes":
            script.escapes = True
        elif name == "garbage":
            script.garbage = value or "html"
        elif name == "quirk":
            script.quirks.update(q.strip() for q in value.split(",") if q.strip())
        elif name == "fail":
            script.fail = _int(value, 500)
        elif name == "fail_times":
            times, _, status = value.partition(":")
            script.fail_times = (_int(times, 1), _int(status, 500))
        elif name == "hang":
            script.hang = True
        elif name == "drop":
            script.drop = True
        elif name == "stream_error":
            script.stream_error = True
        elif name == "slow":
            script.slow = _int(value, 0) / 1000
        elif name == "latency":
            script.latency = _int(value, 0) / 1000
    return script


def unescape(text: str) -> str:
    """Decode \\uXXXX escapes, lone surrogates and NUL included."""
    return _ESCAPE.sub(lambda match: chr(int(match.group(1), 16)), text)


def strip_directives(text: str) -> str:
    return " ".join(DIRECTIVE.sub(" ", text).split())


def _int(value: str, default: int) -> int:
    try:
        return int(value.strip())
    except ValueError:
        return default


# ------------------------------------------------------------- protocol-neutral conversation


@dataclass
class Conversation:
    """What the script needs from a request, whichever protocol it came in."""

    last_user_text: str
    round: int
    tool_outputs: list[str]
    prompt_tokens: int
    max_tokens: int | None
    json_mode: bool
    stream: bool
    include_usage: bool
    model: str
    key: str  # identifies the conversation, for [[fail_times]]


def _words(texts: list[str]) -> int:
    return sum(len(text.split()) for text in texts)


def embedding_of(text: str) -> list[float]:
    """The scripted embedding of `text`: 16 numbers from its SHA-256, not normalised (clients
    normalise), the same for the same text."""
    digest = hashlib.sha256(text.encode()).digest()
    return [(b - 127.5) / 10 for b in digest[:16]]


def _may_choose_tool(body: dict[str, Any]) -> bool:
    """Tools offered, and the model left to choose whether to call one."""
    return bool(body.get("tools")) and body.get("tool_choice", "auto") == "auto"


def _openai_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(
            part.get("text", "")
            for part in content
            if isinstance(part, dict) and part.get("type") == "text"
        )
    return ""


def openai_conversation(body: dict[str, Any]) -> Conversation:
    messages = [m for m in body.get("messages") or [] if isinstance(m, dict)]
    last_user = max((i for i, m in enumerate(messages) if m.get("role") == "user"), default=-1)
    after = messages[last_user + 1 :]
    round_ = sum(1 for m in after if m.get("role") == "assistant" and _has_openai_calls(m))
    tool_outputs: list[str] = []
    for message in reversed(messages):
        if message.get("role") not in ("tool", "function"):
            break
        tool_outputs.insert(0, _openai_text(message.get("content")))
    texts: list[str] = []
    for message in messages:
        texts.append(_openai_text(message.get("content")))
        for call in message.get("tool_calls") or []:
            texts.append(str((call.get("function") or {}).get("arguments") or ""))
        if message.get("function_call"):
            texts.append(str(message["function_call"].get("arguments") or ""))
    response_format = body.get("response_format") or {}
    stream_options = body.get("stream_options") or {}
    return Conversation(
        last_user_text=_openai_text(messages[last_user].get("content")) if last_user >= 0 else "",
        round=round_,
        tool_outputs=tool_outputs,
        prompt_tokens=_words(texts),
        max_tokens=body.get("max_completion_tokens") or body.get("max_tokens"),
        json_mode=response_format.get("type") in ("json_object", "json_schema"),
        stream=bool(body.get("stream")),
        include_usage=bool(stream_options.get("include_usage")),
        model=str(body.get("model") or "scripted"),
        key="openai:" + json.dumps(messages, sort_keys=True),
    )


def _has_openai_calls(message: dict[str, Any]) -> bool:
    return bool(message.get("tool_calls") or message.get("function_call"))


def _anthropic_blocks(content: Any) -> list[dict[str, Any]]:
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    if isinstance(content, list):
        return [block for block in content if isinstance(block, dict)]
    return []


def _anthropic_text(content: Any) -> str:
    return "\n".join(
        str(block.get("text", ""))
        for block in _anthropic_blocks(content)
        if block.get("type") == "text"
    )


def anthropic_conversation(body: dict[str, Any]) -> Conversation:
    messages = [m for m in body.get("messages") or [] if isinstance(m, dict)]
    # A user turn carrying only tool results answers the model; the human spoke last in the
    # last user turn with text.
    last_user = max(
        (
            i
            for i, m in enumerate(messages)
            if m.get("role") == "user"
            and any(b.get("type") == "text" for b in _anthropic_blocks(m.get("content")))
        ),
        default=-1,
    )
    after = messages[last_user + 1 :]
    round_ = sum(
        1
        for m in after
        if m.get("role") == "assistant"
        and any(b.get("type") == "tool_use" for b in _anthropic_blocks(m.get("content")))
    )
    tool_outputs: list[str] = []
    if messages and messages[-1].get("role") == "user":
        for block in _anthropic_blocks(messages[-1].get("content")):
            if block.get("type") == "tool_result":
                content = block.get("content")
                tool_outputs.append(
                    content if isinstance(content, str) else _anthropic_text(content)
                )
    system = body.get("system")
    texts = [system if isinstance(system, str) else _anthropic_text(system)]
    for message in messages:
        for block in _anthropic_blocks(message.get("content")):
            kind = block.get("type")
            if kind == "text":
                texts.append(str(block.get("text", "")))
            elif kind == "tool_use":
                texts.append(json.dumps(block.get("input") or {}))
            elif kind == "tool_result":
                content = block.get("content")
                texts.append(content if isinstance(content, str) else _anthropic_text(content))
    return Conversation(
        last_user_text=_anthropic_text(messages[last_user].get("content"))
        if last_user >= 0
        else "",
        round=round_,
        tool_outputs=tool_outputs,
        prompt_tokens=_words(texts),
        max_tokens=body.get("max_tokens"),
        # AnthropicBackend asks for JSON in the system prompt, for want of response_format.
        json_mode=_ANTHROPIC_JSON_INSTRUCTION in texts[0],
        stream=bool(body.get("stream")),
        include_usage=True,
        model=str(body.get("model") or "scripted"),
        key="anthropic:" + json.dumps([system, messages], sort_keys=True),
    )


# ------------------------------------------------------------------------------ the reply


@dataclass
class Reply:
    chunks: list[str]  # text, one word (with its leading whitespace) per chunk
    calls: list[tuple[str, str]]  # (name, arguments)
    truncated: bool

    @property
    def text(self) -> str:
        return "".join(self.chunks)


def plan_reply(script: Script, conv: Conversation) -> Reply:
    calls = script.calls_for(conv.round)
    if script.escapes:
        calls = [(unescape(name), unescape(arguments)) for name, arguments in calls]
    if script.chunks is not None and not calls:
        chunks = list(script.chunks)
    else:
        chunks = _CHUNK.findall(_reply_text(script, conv, calls) or "")
    truncated = False
    if conv.max_tokens is not None and len(chunks) > conv.max_tokens:
        chunks = chunks[: max(conv.max_tokens, 0)]
        truncated = True
    return Reply(chunks=chunks, calls=calls, truncated=truncated)


def _reply_text(script: Script, conv: Conversation, calls: list[tuple[str, str]]) -> str | None:
    text: str | None
    if calls:
        text = script.replies_at.get(conv.round)
    elif conv.round in script.replies_at:
        text = script.replies_at[conv.round]
    elif script.reply is not None:
        text = script.reply
    elif script.tokens is not None:
        text = " ".join(f"token{i}" for i in range(1, script.tokens + 1))
    else:
        if conv.round > 0 or conv.tool_outputs:
            text = "Tool results: " + "; ".join(conv.tool_outputs)
        else:
            text = "Echo: " + (strip_directives(conv.last_user_text) or "(no text)")
        if conv.json_mode:
            text = json.dumps({"echo": text})
    return unescape(text) if script.escapes and text else text


def split_arguments(arguments: str) -> list[str]:
    """Arguments in about three fragments, so clients must concatenate them."""
    if not arguments:
        return [""]
    size = max(1, math.ceil(len(arguments) / 3))
    return [arguments[i : i + size] for i in range(0, len(arguments), size)]


def _json_input(arguments: str) -> dict[str, Any]:
    try:
        value = json.loads(arguments)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


# ------------------------------------------------------------------ protocol renderers


def _sse(data: dict[str, Any] | str, event: str | None = None) -> bytes:
    payload = data if isinstance(data, str) else json.dumps(data)
    head = f"event: {event}\n" if event else ""
    return f"{head}data: {payload}\n\n".encode()


class OpenAIRenderer:
    # A [[drop]] / [[stream_error]] stream gets the role chunk and two words out first.
    events_before_failure = 3

    def __init__(self, conv: Conversation, script: Script, reply: Reply, serial: int) -> None:
        self.conv, self.script, self.reply, self.serial = conv, script, reply, serial
        self.id = f"chatcmpl-scripted-{serial}"
        self.created = int(time.time())
        self.legacy = "legacy_function_call" in script.quirks
        calls = reply.calls[:1] if self.legacy else reply.calls
        shared = f"call_{serial}_shared"
        self.calls = [
            (shared if "same_id" in script.quirks else f"call_{serial}_{i}", name, args)
            for i, (name, args) in enumerate(calls)
        ]
        self.fragments = sum(len(split_arguments(args)) for _, _, args in self.calls)

    def finish_reason(self) -> str:
        if self.calls:
            return "function_call" if self.legacy else "tool_calls"
        return "length" if self.reply.truncated else "stop"

    def usage(self) -> dict[str, int]:
        completion = len(self.reply.chunks) + self.fragments
        return {
            "prompt_tokens": self.conv.prompt_tokens,
            "completion_tokens": completion,
            "total_tokens": self.conv.prompt_tokens + completion,
        }

    def _chunk(self, delta: dict[str, Any], finish: str | None = None) -> bytes:
        return _sse(
            {
                "id": self.id,
                "object": "chat.completion.chunk",
                "created": self.created,
                "model": self.conv.model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
            }
        )

    def stream(self) -> list[bytes]:
        quirks = self.script.quirks
        events = [self._chunk({"role": "assistant", "content": ""})]
        events += [self._chunk({"content": chunk}) for chunk in self.reply.chunks]
        for i, (call_id, name, arguments) in enumerate(self.calls):
            pieces = split_arguments(arguments)
            if self.legacy:
                events.append(self._chunk({"function_call": {"name": name, "arguments": ""}}))
                events += [self._chunk({"function_call": {"arguments": p}}) for p in pieces]
                continue

            def fragment(
                function: dict[str, Any], *, first: bool, i: int = i, call_id: str = call_id
            ) -> dict[str, Any]:
                out: dict[str, Any] = {}
                if "no_index" not in quirks:
                    out["index"] = i
                if "no_id" not in quirks and (first or "repeat_id" in quirks):
                    out["id"] = call_id
                    out["type"] = "function"
                out["function"] = function
                delta: dict[str, Any] = {"tool_calls": [out]}
                if "dup_function_call" in quirks:
                    delta["function_call"] = function
                return delta

            if "dup_function_call" in quirks:
                # As llama-cpp-python streams: id and name in every fragment, then one more
                # fragment with the name and no arguments.
                events += [
                    self._chunk(fragment({"name": name, "arguments": p}, first=True))
                    for p in [*pieces, ""]
                ]
                continue
            # Like OpenAI: the name comes alone, the arguments in later fragments.
            events.append(self._chunk(fragment({"name": name, "arguments": ""}, first=True)))
            events += [self._chunk(fragment({"arguments": p}, first=False)) for p in pieces]
        if "no_finish" not in quirks:
            events.append(self._chunk({}, self.finish_reason()))
        if self.conv.include_usage and "no_usage" not in quirks:
            events.append(
                _sse(
                    {
                        "id": self.id,
                        "object": "chat.completion.chunk",
                        "created": self.created,
                        "model": self.conv.model,
                        "choices": [],
                        "usage": self.usage(),
                    }
                )
            )
        events.append(_sse("[DONE]"))
        return events

    def stream_error(self) -> bytes:
        return _sse(
            {"error": {"message": "scripted stream error", "type": "server_error", "code": 500}}
        )

    def completion(self) -> dict[str, Any]:
        message: dict[str, Any] = {"role": "assistant", "content": self.reply.text or None}
        if self.calls and self.legacy:
            _, name, arguments = self.calls[0]
            message["function_call"] = {"name": name, "arguments": arguments}
        elif self.calls:
            message["tool_calls"] = [
                {"id": call_id, "type": "function", "function": {"name": n, "arguments": a}}
                for call_id, n, a in self.calls
            ]
        elif message["content"] is None:
            message["content"] = ""
        body: dict[str, Any] = {
            "id": self.id,
            "object": "chat.completion",
            "created": self.created,
            "model": self.conv.model,
            "choices": [
                {
                    "index": 0,
                    "message": message,
                    "finish_reason": self.finish_reason(),
                    "logprobs": None,
                }
            ],
        }
        if "no_usage" not in self.script.quirks:
            body["usage"] = self.usage()
        return body

    @staticmethod
    def error_body(status: int, message: str) -> dict[str, Any]:
        kinds = {
            400: "invalid_request_error",
            401: "authentication_error",
            403: "permission_error",
            404: "not_found_error",
            429: "rate_limit_error",
        }
        return {
            "error": {
                "message": message,
                "type": kinds.get(status, "server_error"),
                "param": None,
                "code": str(status),
            }
        }


class AnthropicRenderer:
    # message_start, ping, content_block_start and two words.
    events_before_failure = 5

    def __init__(self, conv: Conversation, script: Script, reply: Reply, serial: int) -> None:
        self.conv, self.script, self.reply, self.serial = conv, script, reply, serial
        self.id = f"msg_scripted_{serial}"
        self.calls = [
            (f"toolu_{serial}_{i}", name, args) for i, (name, args) in enumerate(reply.calls)
        ]
        self.fragments = sum(len(split_arguments(args)) for _, _, args in self.calls)

    def stop_reason(self) -> str:
        if self.calls:
            return "tool_use"
        return "max_tokens" if self.reply.truncated else "end_turn"

    def output_tokens(self) -> int:
        return len(self.reply.chunks) + self.fragments

    def stream(self) -> list[bytes]:
        events = [
            _sse(
                {
                    "type": "message_start",
                    "message": {
                        "id": self.id,
                        "type": "message",
                        "role": "assistant",
                        "model": self.conv.model,
                        "content": [],
                        "stop_reason": None,
                        "stop_sequence": None,
                        "usage": {"input_tokens": self.conv.prompt_tokens, "output_tokens": 1},
                    },
                },
                "message_start",
            ),
            _sse({"type": "ping"}, "ping"),
        ]
        index = 0
        if self.reply.chunks:
            events.append(
                _sse(
                    {
                        "type": "content_block_start",
                        "index": index,
                        "content_block": {"type": "text", "text": ""},
                    },
                    "content_block_start",
                )
            )
            for chunk in self.reply.chunks:
                events.append(
                    _sse(
                        {
                            "type": "content_block_delta",
                            "index": index,
                            "delta": {"type": "text_delta", "text": chunk},
                        },
                        "content_block_delta",
                    )
                )
            events.append(
                _sse({"type": "content_block_stop", "index": index}, "content_block_stop")
            )
            index += 1
        for call_id, name, arguments in self.calls:
            events.append(
                _sse(
                    {
                        "type": "content_block_start",
                        "index": index,
                        "content_block": {
                            "type": "tool_use",
                            "id": call_id,
                            "name": name,
                            "input": {},
                        },
                    },
                    "content_block_start",
                )
            )
            for piece in split_arguments(arguments):
                events.append(
                    _sse(
                        {
                            "type": "content_block_delta",
                            "index": index,
                            "delta": {"type": "input_json_delta", "partial_json": piece},
                        },
                        "content_block_delta",
                    )
                )
            events.append(
                _sse({"type": "content_block_stop", "index": index}, "content_block_stop")
            )
            index += 1
        events.append(
            _sse(
                {
                    "type": "message_delta",
                    "delta": {"stop_reason": self.stop_reason(), "stop_sequence": None},
                    "usage": {"output_tokens": self.output_tokens()},
                },
                "message_delta",
            )
        )
        events.append(_sse({"type": "message_stop"}, "message_stop"))
        return events

    def stream_error(self) -> bytes:
        return _sse(
            {
                "type": "error",
                "error": {"type": "overloaded_error", "message": "scripted stream error"},
            },
            "error",
        )

    def completion(self) -> dict[str, Any]:
        content: list[dict[str, Any]] = []
        if self.reply.chunks:
            content.append({"type": "text", "text": self.reply.text})
        for call_id, name, arguments in self.calls:
            content.append(
                {"type": "tool_use", "id": call_id, "name": name, "input": _json_input(arguments)}
            )
        return {
            "id": self.id,
            "type": "message",
            "role": "assistant",
            "model": self.conv.model,
            "content": content,
            "stop_reason": self.stop_reason(),
            "stop_sequence": None,
            "usage": {
                "input_tokens": self.conv.prompt_tokens,
                "output_tokens": self.output_tokens(),
            },
        }

    @staticmethod
    def error_body(status: int, message: str) -> dict[str, Any]:
        kinds = {
            400: "invalid_request_error",
            401: "authentication_error",
            403: "permission_error",
            404: "not_found_error",
            413: "request_too_large",
            429: "rate_limit_error",
            529: "overloaded_error",
        }
        return {
            "type": "error",
            "error": {
                "type": kinds.get(status, "api_error"),
                "message": message,
            },
        }


# ------------------------------------------------------------------------------ HTTP


@dataclass
class RecordedRequest:
    path: str
    headers: dict[str, str]
    body: dict[str, Any]


class _Dropped(Exception):
    """The script asked to cut the connection."""


_REASONS = {
    200: "OK",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    429: "Too Many Requests",
    500: "Internal Server Error",
    502: "Bad Gateway",
    503: "Service Unavailable",
    529: "Overloaded",
}


class _Connection:
    """One client connection: HTTP/1.1 with keep-alive, enough for the SDKs and httpx.

    The server is asyncio rather than thread-per-connection because benchmarks run hundreds
    of concurrent streams, and handler threads convoy on the GIL (accepts then lag seconds).
    """

    def __init__(
        self, owner: ScriptedLLM, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        self.owner = owner
        self.reader = reader
        self.writer = writer

    async def serve(self) -> None:
        try:
            while await self._one_request():
                pass
        except _Dropped:
            # Like a crashing server: no terminating chunk, the socket just goes away.
            self.writer.transport.abort()
            return
        except (OSError, asyncio.IncompleteReadError, ValueError):
            pass
        with contextlib.suppress(OSError):
            self.writer.close()

    async def _one_request(self) -> bool:
        """Serve one request; False when the connection must close."""
        request_line = await self.reader.readline()
        if not request_line.strip():
            return False
        method, target, version = request_line.decode("latin-1").split(None, 2)
        headers: dict[str, str] = {}
        while True:
            line = await self.reader.readline()
            if line in (b"\r\n", b"\n", b""):
                break
            name, _, value = line.decode("latin-1").partition(":")
            headers[name.strip().lower()] = value.strip()
        raw = await self._read_body(headers)
        keep_alive = version.strip().upper() == "HTTP/1.1" and (
            headers.get("connection", "").lower() != "close"
        )
        path = target.split("?", 1)[0].rstrip("/")
        if method == "GET":
            await self._get(path)
        elif method == "POST":
            keep_alive = await self._post(path, headers, raw) and keep_alive
        else:
            await self._json(405, {"error": {"message": f"method {method} not allowed"}})
        return keep_alive

    async def _read_body(self, headers: dict[str, str]) -> bytes:
        if "chunked" in headers.get("transfer-encoding", "").lower():
            parts: list[bytes] = []
            while True:
                size = int((await self.reader.readline()).split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    await self.reader.readline()
                    return b"".join(parts)
                parts.append(await self.reader.readexactly(size))
                await self.reader.readline()
        length = int(headers.get("content-length") or 0)
        return await self.reader.readexactly(length) if length else b""

    async def _get(self, path: str) -> None:
        if path in ("/v1/models", "/models"):
            await self._json(
                200, {"object": "list", "data": [{"id": "scripted", "object": "model"}]}
            )
        elif path in ("", "/health"):
            await self._json(200, {"status": "ok"})
        else:
            await self._json(404, {"error": {"message": f"no route {path}"}})

    async def _post(self, path: str, headers: dict[str, str], raw: bytes) -> bool:
        try:
            body = json.loads(raw or b"{}")
            if not isinstance(body, dict):
                raise ValueError("the body must be a JSON object")
        except ValueError as exc:
            await self._json(400, {"error": {"message": f"invalid JSON body: {exc}"}})
            return True
        self.owner._record(RecordedRequest(path, headers, body))
        if path.endswith("/chat/completions"):
            return await self._serve(body, openai_conversation(body), OpenAIRenderer)
        if path.endswith("/messages"):
            return await self._serve(body, anthropic_conversation(body), AnthropicRenderer)
        if path.endswith("/embeddings"):
            return await self._embeddings(body)
        await self._json(404, {"error": {"message": f"no route {path}"}})
        return True

    async def _embeddings(self, body: dict[str, Any]) -> bool:
        inputs = body.get("input")
        if isinstance(inputs, str):
            inputs = [inputs]
        if not isinstance(inputs, list) or not all(isinstance(t, str) for t in inputs):
            await self._json(400, {"error": {"message": "input must be a string or strings"}})
            return True
        joined = " ".join(inputs)
        script = parse_script(joined)
        if script.fail is not None:
            message = f"scripted embeddings failure {script.fail}"
            await self._json(script.fail, {"error": {"message": message, "type": "server_error"}})
            return True
        data: list[dict[str, Any]] = [
            {"object": "embedding", "index": i, "embedding": embedding_of(text)}
            for i, text in enumerate(inputs)
        ]
        # Out of order: clients must follow `index`.
        data.reverse()
        kind = script.garbage
        if kind in ("html", "sse"):
            await self._garbage(kind)
            return True
        if kind == "json":
            await self._garbage("json")
            return True
        if kind == "count":
            data = data[1:]
        elif kind == "nan":
            data[0]["embedding"][3] = float("nan")
        elif kind == "text":
            data[0]["embedding"] = ["a", "b"]
        elif kind == "dims":
            data[0]["embedding"] = data[0]["embedding"][:8]
        usage = {"prompt_tokens": len(joined.split()), "total_tokens": len(joined.split())}
        answer = {"object": "list", "data": data, "model": body.get("model"), "usage": usage}
        await self._json(200, answer)
        return True

    async def _serve(
        self,
        body: dict[str, Any],
        conv: Conversation,
        renderer_type: type[OpenAIRenderer] | type[AnthropicRenderer],
    ) -> bool:
        owner = self.owner
        script = parse_script(conv.last_user_text)
        delay = owner.latency + script.latency
        if delay > 0:
            await asyncio.sleep(delay)
        if script.hang:
            # Until the client gives up (EOF) or the server stops (cancellation).
            while await self.reader.read(65536):
                pass
            return False
        status = script.fail
        if status is None and script.fail_times is not None:
            times, fail_status = script.fail_times
            if owner._count_failure(conv.key) <= times:
                status = fail_status
        message = f"scripted failure: HTTP {status}"
        if status is None and "reject_stream_options" in script.quirks and "stream_options" in body:
            status, message = 400, "Unknown parameter: stream_options"
        if status is None and "reject_temperature" in script.quirks and "temperature" in body:
            status, message = 400, "temperature is deprecated for this model"
        if status is not None:
            await self._json(status, renderer_type.error_body(status, message))
            return True
        if script.garbage is not None:
            await self._garbage(script.garbage)
            return True
        renderer = renderer_type(conv, script, plan_reply(script, conv), owner._next_serial())
        if conv.stream and "empty_stream_auto" in script.quirks and _may_choose_tool(body):
            # llama-cpp-python's chatml-function-calling raises "Automatic streaming tool
            # choice is not supported" after the 200 head: an event stream with no event.
            self._head(
                200,
                {
                    "Content-Type": "text/event-stream; charset=utf-8",
                    "Transfer-Encoding": "chunked",
                },
            )
            self.writer.write(b"0\r\n\r\n")
            await self.writer.drain()
            # And it drops the connection, though it said keep-alive: a client that reuses it
            # gets "Server disconnected without sending a response".
            return False
        if conv.stream and "ignore_stream" not in script.quirks:
            await self._stream(renderer, script)
        else:
            await self._complete(renderer, script)
        return True

    async def _stream(self, renderer: OpenAIRenderer | AnthropicRenderer, script: Script) -> None:
        events = renderer.stream()
        if script.drop or script.stream_error:
            cut = min(renderer.events_before_failure, max(len(events) - 2, 1))
            events = events[:cut]
        self._head(
            200,
            {
                "Content-Type": "text/event-stream; charset=utf-8",
                "Cache-Control": "no-cache",
                "Transfer-Encoding": "chunked",
            },
        )
        for n, event in enumerate(events):
            if n and script.slow:
                await asyncio.sleep(script.slow)
            self._chunk(event)
            await self.writer.drain()
        if script.drop:
            raise _Dropped
        if script.stream_error:
            self._chunk(renderer.stream_error())
            if isinstance(renderer, OpenAIRenderer):
                self._chunk(_sse("[DONE]"))
        self.writer.write(b"0\r\n\r\n")
        await self.writer.drain()

    async def _complete(self, renderer: OpenAIRenderer | AnthropicRenderer, script: Script) -> None:
        payload = json.dumps(renderer.completion()).encode()
        if script.drop:
            self._head(
                200, {"Content-Type": "application/json", "Content-Length": str(len(payload))}
            )
            self.writer.write(payload[: len(payload) // 2])
            await self.writer.drain()
            raise _Dropped
        await self._json(200, renderer.completion())

    async def _garbage(self, kind: str) -> None:
        if kind == "json":
            await self._json(200, {"status": "ok", "detail": "scripted garbage, no completion"})
            return
        if kind == "sse":
            payload = _sse({"scripted": "garbage"}) * 2 + _sse("[DONE]")
            content_type = "text/event-stream; charset=utf-8"
        else:
            payload = GARBAGE_HTML
            content_type = "text/html"
        self._head(200, {"Content-Type": content_type, "Content-Length": str(len(payload))})
        self.writer.write(payload)
        await self.writer.drain()

    def _head(self, status: int, headers: dict[str, str]) -> None:
        lines = [f"HTTP/1.1 {status} {_REASONS.get(status, 'Error')}"]
        lines += [f"{name}: {value}" for name, value in headers.items()]
        self.writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))

    def _chunk(self, data: bytes) -> None:
        self.writer.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")

    async def _json(self, status: int, body: dict[str, Any]) -> None:
        payload = json.dumps(body).encode()
        self._head(
            status, {"Content-Type": "application/json", "Content-Length": str(len(payload))}
        )
        self.writer.write(payload)
        await self.writer.drain()


class ScriptedLLM:
    """The scripted LLM server, on 127.0.0.1 with an ephemeral port by default.

    It runs its own event loop in a daemon thread, so it serves sync and async tests alike.
    `latency` (seconds) delays every answer, before its first byte (for benchmarks).
    """

    def __init__(self, *, host: str = "127.0.0.1", port: int = 0, latency: float = 0.0) -> None:
        self.host = host
        self.port = port
        self.latency = latency
        self._lock = threading.Lock()
        self._recorded: list[RecordedRequest] = []
        self._failures: dict[str, int] = {}
        self._serial = itertools.count(1)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()

    # lifecycle

    def start(self) -> ScriptedLLM:
        if self._thread is not None:
            return self
        loop = asyncio.new_event_loop()
        started = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            asyncio.set_event_loop(loop)
            try:
                loop.run_until_complete(self._listen())
            except BaseException as exc:
                failure.append(exc)
                started.set()
                return
            started.set()
            loop.run_forever()
            loop.close()

        self._loop = loop
        self._thread = threading.Thread(target=run, name="scripted-llm", daemon=True)
        self._thread.start()
        started.wait()
        if failure:
            self._thread.join()
            self._thread = None
            raise failure[0]
        return self

    async def _listen(self) -> None:
        self._server = await asyncio.start_server(
            self._accept, self.host, self.port, backlog=1024, reuse_address=True
        )
        self.port = int(self._server.sockets[0].getsockname()[1])

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        try:
            await _Connection(self, reader, writer).serve()
        except asyncio.CancelledError:
            # stop() cancels connections; ending quietly keeps asyncio from logging each one.
            writer.transport.abort()
        finally:
            self._connections.discard(task)

    async def _shutdown(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._connections):
            task.cancel()
        if self._connections:
            await asyncio.wait(list(self._connections), timeout=5)
        if self._server is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._server.wait_closed(), timeout=5)

    def stop(self) -> None:
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(self._shutdown(), loop).result(timeout=10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        self._loop = None
        self._thread = None
        self._server = None

    def __enter__(self) -> ScriptedLLM:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # addresses

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def base_url(self) -> str:
        """For OpenAI clients (`.../v1`)."""
        return f"{self.url}/v1"

    @property
    def anthropic_base_url(self) -> str:
        """For Anthropic clients, which append `/v1/messages` themselves."""
        return self.url

    # what was received

    @property
    def requests(self) -> list[dict[str, Any]]:
        """The JSON bodies received so far, oldest first (a snapshot)."""
        with self._lock:
            return [recorded.body for recorded in self._recorded]

    @property
    def recorded(self) -> list[RecordedRequest]:
        """Path, headers (lower-case names) and body of every request so far (a snapshot)."""
        with self._lock:
            return list(self._recorded)

    @property
    def last_request(self) -> dict[str, Any] | None:
        with self._lock:
            return self._recorded[-1].body if self._recorded else None

    def reset(self) -> None:
        """Forget received requests and [[fail_times]] counters."""
        with self._lock:
            self._recorded.clear()
            self._failures.clear()

    # used by the connections

    def _record(self, recorded: RecordedRequest) -> None:
        with self._lock:
            self._recorded.append(recorded)

    def _count_failure(self, key: str) -> int:
        with self._lock:
            self._failures[key] = self._failures.get(key, 0) + 1
            return self._failures[key]

    def _next_serial(self) -> int:
        with self._lock:
            return next(self._serial)


def main() -> None:
    parser = argparse.ArgumentParser(description="Run the scripted LLM server.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8001)
    parser.add_argument("--latency", type=float, default=0.0, help="seconds before each answer")
    args = parser.parse_args()
    llm = ScriptedLLM(host=args.host, port=args.port, latency=args.latency).start()
    print(
        f"scripted LLM: OpenAI base URL {llm.base_url}, "
        f"Anthropic base URL {llm.anthropic_base_url}",
        flush=True,
    )
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        llm.stop()


if __name__ == "__main__":
    main()
