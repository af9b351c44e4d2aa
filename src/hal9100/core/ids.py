"""OpenAI-style object ids: a type prefix and 24 random base62 characters."""

from __future__ import annotations

import secrets
import string

_ALPHABET = string.ascii_letters + string.digits


# 256 is 4 x 62 + 8: bytes below 248 map evenly onto the alphabet, the rest are redrawn.
_EVEN = 248


def new_id(prefix: str, length: int = 24) -> str:
    # One read of the OS's random source per id (secrets.choice per character was 1% of a
    # run's CPU); rejection keeps every character uniform.
    chars: list[str] = []
    while len(chars) < length:
        chars.extend(_ALPHABET[b % 62] for b in secrets.token_bytes(length + 4) if b < _EVEN)
    return prefix + "".join(chars[:length])


def assistant_id() -> str:
    return new_id("asst_")


def thread_id() -> str:
    return new_id("thread_")


def message_id() -> str:
    return new_id("msg_")


def file_id() -> str:
    return new_id("file-", 22)


def run_id() -> str:
    return new_id("run_")


def step_id() -> str:
    return new_id("step_")


def call_id() -> str:
    return new_id("call_")


def vector_store_id() -> str:
    return new_id("vs_")


def file_batch_id() -> str:
    return new_id("vsfb_")


# A response's id (its run is recorded by the Responses API).
RESPONSE_PREFIX = "resp_"


def response_id() -> str:
    return new_id(RESPONSE_PREFIX)


def conversation_id() -> str:
    return new_id("conv_")
