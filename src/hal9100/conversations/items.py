"""Conversation items: what the Conversations and Responses APIs call the entries of a
thread, read from and written to the tables the Assistants API uses.

A thread is a conversation. Its user and assistant messages are `message` items (their ids
are the messages' ids); each tool call of its runs' `tool_calls` steps is a `function_call`
(followed by its `function_call_output` once answered), `file_search_call` or
`code_interpreter_call` item whose id is derived from the call's id; everything else a
client adds (function call outputs for a response, system and developer messages,
reasoning items) is a row of `items`. The three tables are merged on `ordinal`, the
entry's place in time.

Input items are read as OpenAI reads them: a message without `type`, content given as a
string, items carrying the ids and statuses an earlier response gave them.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

from sqlalchemy import bindparam, select
from sqlalchemy.ext.asyncio import AsyncSession

from hal9100.conversations.schemas import ItemList
from hal9100.core import ids
from hal9100.core.clock import now, ordinal
from hal9100.core.errors import bad_request
from hal9100.core.pagination import ListParams
from hal9100.core.text import storable
from hal9100.db.models import File, Item, Message, Run, RunStep
from hal9100.messages.repository import MessageRepository
from hal9100.responses.tools import namespaced
from hal9100.tools import file_search

# Item ids derived from a tool call's id (`call_<rest>`), by the call's type.
_CALL_ITEM_PREFIX = {
    "function": "fc_",
    "function_output": "fco_",
    "file_search": "fs_",
    "code_interpreter": "ci_",
}
# Input item types a conversation keeps as they are given (besides messages).
STORED_TYPES = {
    "compaction",
    "function_call",
    "function_call_output",
    "reasoning",
    "file_search_call",
    "code_interpreter_call",
}
MESSAGE_ROLES = {"user", "assistant", "system", "developer"}
# Roles the Assistants API shows as a thread's messages.
THREAD_ROLES = {"user", "assistant"}
DELETED = "deleted"


# --- reading ---------------------------------------------------------------------------


def _output_text(text: dict[str, Any], filenames: dict[str, str]) -> dict[str, Any]:
    """An assistant's text part as Responses shows it: the citation markers the Assistants
    text keeps (`【0:0†a.txt】`, each a `file_citation` annotation's span) are taken out, and
    each citation points at the place its marker was."""
    value = str(text.get("value", ""))
    out: list[str] = []
    annotations: list[dict[str, Any]] = []
    taken = 0
    removed = 0
    spans = sorted(
        (a for a in text.get("annotations") or [] if isinstance(a, dict)),
        key=lambda a: int(a.get("start_index") or 0),
    )
    for annotation in spans:
        start = int(annotation.get("start_index") or 0)
        end = int(annotation.get("end_index") or 0)
        kind = annotation.get("type")
        if kind == "file_citation" and taken <= start <= end <= len(value):
            out.append(value[taken:start])
            removed += end - start
            taken = end
            file_id = str((annotation.get("file_citation") or {}).get("file_id", ""))
            annotations.append(
                {
                    "type": "file_citation",
                    "file_id": file_id,
                    "filename": filenames.get(file_id, ""),
                    "index": start - (removed - (end - start)),
                }
            )
        elif kind == "file_path":
            annotations.append(
                {
                    "type": "file_path",
                    "file_id": (annotation.get("file_path") or {}).get("file_id", ""),
                    "index": max(0, end - removed),
                }
            )
    out.append(value[taken:])
    return {"type": "output_text", "text": "".join(out), "annotations": annotations, "logprobs": []}


def _assistants_part_as_item(
    part: dict[str, Any], role: str, filenames: dict[str, str]
) -> dict[str, Any] | None:
    kind = part.get("type")
    if kind == "text":
        text = part.get("text") or {}
        if role == "assistant":
            return _output_text(text, filenames)
        return {"type": "input_text", "text": text.get("value", "")}
    if kind == "refusal":
        return {"type": "refusal", "refusal": part.get("refusal", "")}
    if kind == "image_file":
        image = part.get("image_file") or {}
        return {
            "type": "input_image",
            "file_id": image.get("file_id"),
            "detail": image.get("detail") or "auto",
        }
    if kind == "image_url":
        image = part.get("image_url") or {}
        return {
            "type": "input_image",
            "image_url": image.get("url"),
            "detail": image.get("detail") or "auto",
        }
    return None


def cited_file_ids(message: Message) -> set[str]:
    found: set[str] = set()
    for part in message.content or []:
        text = part.get("text") if isinstance(part, dict) else None
        if not isinstance(text, dict):
            continue
        for annotation in text.get("annotations") or []:
            file_id = (annotation.get("file_citation") or {}).get("file_id")
            if isinstance(file_id, str):
                found.add(file_id)
    return found


async def filenames_of(session: AsyncSession, messages: list[Message]) -> dict[str, str]:
    """The names of the files the messages cite (Responses' citations carry them)."""
    wanted: set[str] = set()
    for message in messages:
        wanted |= cited_file_ids(message)
    return await filenames_of_files(session, wanted)


async def filenames_of_files(session: AsyncSession, file_ids: set[str]) -> dict[str, str]:
    if not file_ids:
        return {}
    rows = await session.execute(select(File.id, File.filename).where(File.id.in_(file_ids)))
    return {file_id: name for file_id, name in rows.tuples()}


def message_item(message: Message, filenames: dict[str, str] | None = None) -> dict[str, Any]:
    if message.item_content is not None:
        content = list(message.item_content)
    else:
        content = [
            part
            for part in (
                _assistants_part_as_item(p, message.role, filenames or {})
                for p in message.content or []
            )
            if part is not None
        ]
    status = message.status if message.status in ("in_progress", "incomplete") else "completed"
    return {
        "type": "message",
        "id": message.id,
        "status": status,
        "role": message.role,
        "content": content,
    }


def call_item_id(call_id: str, kind: str) -> str:
    return _CALL_ITEM_PREFIX[kind] + call_id.removeprefix("call_")


def _call_status(step: RunStep) -> str:
    if step.status == "completed":
        return "completed"
    if step.status == "in_progress":
        return "in_progress"
    return "incomplete"


def step_items(
    step: RunStep,
    include: Collection[str] = (),
    namespaces: dict[str, tuple[str, str]] | None = None,
) -> list[dict[str, Any]]:
    """A `tool_calls` step's calls as items (function calls, then the outputs they have);
    `namespaces`: the run's functions offered under a namespace (name -> namespace, name)."""
    if step.type != "tool_calls":
        return []
    calls: list[dict[str, Any]] = []
    outputs: list[dict[str, Any]] = []
    status = _call_status(step)
    for call in step.step_details.get("tool_calls") or []:
        if not isinstance(call, dict) or not isinstance(call.get("id"), str):
            continue
        call_id = call["id"]
        kind = call.get("type")
        if kind == "function":
            function = call.get("function") or {}
            made = {
                "type": "function_call",
                "id": call_item_id(call_id, "function"),
                "call_id": call_id,
                "name": function.get("name", ""),
                "arguments": function.get("arguments", ""),
                # A function call is whole once the model made it, answered or not.
                "status": "completed" if status == "in_progress" else status,
            }
            if namespaces and made["name"] in namespaces:
                made["namespace"], made["name"] = namespaces[made["name"]]
            calls.append(made)
            if function.get("output") is not None:
                outputs.append(
                    {
                        "type": "function_call_output",
                        "id": call_item_id(call_id, "function_output"),
                        "call_id": call_id,
                        "output": function["output"],
                        "status": "completed",
                    }
                )
        elif kind == "file_search":
            details = call.get("file_search") or {}
            results = None
            if "file_search_call.results" in include:
                results = [
                    {
                        "file_id": r.get("file_id"),
                        "filename": r.get("file_name"),
                        "score": r.get("score"),
                        "text": "".join(
                            c.get("text", "") for c in r.get("content") or [] if isinstance(c, dict)
                        ),
                        "attributes": r.get("attributes") or {},
                    }
                    for r in details.get("results") or []
                    if isinstance(r, dict)
                ]
            calls.append(
                {
                    "type": "file_search_call",
                    "id": call_item_id(call_id, "file_search"),
                    "status": "searching" if status == "in_progress" else status,
                    "queries": list((call.get(file_search.PRIVATE) or {}).get("queries") or []),
                    "results": results,
                }
            )
        elif kind == "code_interpreter":
            details = call.get("code_interpreter") or {}
            outputs_ = None
            if "code_interpreter_call.outputs" in include:
                outputs_ = []
                for output in details.get("outputs") or []:
                    if not isinstance(output, dict):
                        continue
                    if output.get("type") == "logs":
                        outputs_.append({"type": "logs", "logs": output.get("logs", "")})
                    elif output.get("type") == "image":
                        file_id = (output.get("image") or {}).get("file_id", "")
                        outputs_.append({"type": "image", "url": f"/v1/files/{file_id}/content"})
            calls.append(
                {
                    "type": "code_interpreter_call",
                    "id": call_item_id(call_id, "code_interpreter"),
                    "status": "interpreting" if status == "in_progress" else status,
                    "container_id": step.thread_id,
                    "code": details.get("input", ""),
                    "outputs": outputs_,
                }
            )
    return calls + outputs


@dataclass(slots=True)
class Entry:
    """One item of a conversation, where it comes from, and its place."""

    item: dict[str, Any]
    ordinal: int
    source: Message | RunStep | Item


def _place(value: int | None, created_at: int) -> int:
    # Rows from before the ordinal column: the start of their second.
    return value if value is not None else created_at * 1_000_000


# A thread's rows other than messages, read for every response's prompt and object; built
# once (building and compiling them anew cost more than running them).
_CALL_STEPS = (
    select(RunStep)
    .where(RunStep.thread_id == bindparam("thread_id"), RunStep.type == "tool_calls")
    .order_by(RunStep.created_at, RunStep.seq)
)
_ITEMS = (
    select(Item).where(Item.thread_id == bindparam("thread_id")).order_by(Item.ordinal, Item.seq)
)


async def thread_entries(
    session: AsyncSession,
    thread_id: str,
    include: Collection[str] = (),
) -> list[Entry]:
    """Every item of a thread, oldest first."""
    params = {"thread_id": thread_id}
    messages = await MessageRepository(session).all_in_thread(thread_id)
    steps = (await session.scalars(_CALL_STEPS, params)).all()
    rows = (await session.scalars(_ITEMS, params)).all()
    hidden = {row.data.get("id") for row in rows if row.type == DELETED}
    run_ids = {step.run_id for step in steps}
    run_tools = (
        (await session.execute(select(Run.id, Run.tools).where(Run.id.in_(run_ids)))).tuples()
        if run_ids
        else ()
    )
    namespaces = {run_id: namespaced(tools) for run_id, tools in run_tools}
    filenames = await filenames_of(session, list(messages))
    entries: list[Entry] = []
    for message in messages:
        entries.append(
            Entry(
                message_item(message, filenames),
                _place(message.ordinal, message.created_at),
                message,
            )
        )
    for step in steps:
        place = _place(step.ordinal, step.created_at)
        shown = step_items(step, include, namespaces.get(step.run_id))
        entries.extend(Entry(item, place, step) for item in shown)
    for row in rows:
        if row.type != DELETED:
            entries.append(Entry(row.data, row.ordinal, row))
    # Stable: a step's items keep their order; the kinds' own orders hold within a tie.
    entries.sort(key=lambda e: e.ordinal)
    return [e for e in entries if e.item.get("id") not in hidden]


# --- writing ---------------------------------------------------------------------------


def _text(value: Any, param: str) -> str:
    if not isinstance(value, str):
        raise bad_request(f"Invalid type for '{param}': expected a string.", param)
    return value


def _content_part(part: Any, role: str, param: str) -> dict[str, Any]:
    if not isinstance(part, dict):
        raise bad_request(f"Invalid type for '{param}': expected an object.", param)
    kind = part.get("type")
    if kind in ("input_text", "output_text", "text"):
        text = _text(part.get("text"), f"{param}.text")
        if role == "assistant":
            annotations = _annotations(part.get("annotations") or [], f"{param}.annotations")
            return {
                "type": "output_text",
                "text": text,
                "annotations": annotations,
                "logprobs": [],
            }
        return {"type": "input_text", "text": text}
    if kind == "refusal" and role == "assistant":
        return {"type": "refusal", "refusal": _text(part.get("refusal"), f"{param}.refusal")}
    if kind == "input_image" and role != "assistant":
        detail = part.get("detail") or "auto"
        if detail not in ("auto", "low", "high", "original"):
            raise bad_request(f"Invalid value for '{param}.detail': '{detail}'.", f"{param}.detail")
        file_id, url = part.get("file_id"), part.get("image_url")
        if (file_id is None) == (url is None):
            raise bad_request(
                f"Invalid '{param}': give exactly one of 'file_id' and 'image_url'.", param
            )
        if file_id is not None:
            return {
                "type": "input_image",
                "file_id": _text(file_id, f"{param}.file_id"),
                "detail": detail,
            }
        return {
            "type": "input_image",
            "image_url": _text(url, f"{param}.image_url"),
            "detail": detail,
        }
    if kind == "input_file":
        raise bad_request(
            f"Invalid '{param}': input_file content is not supported by this server; "
            "put the file in a vector store and use file_search, or in code_interpreter.",
            f"{param}.type",
        )
    raise bad_request(
        f"Invalid value for '{param}.type': '{kind}' is not a content type of a {role} message.",
        f"{param}.type",
    )


# The fields of each annotation type an assistant's output_text may carry, and their types.
_ANNOTATION_FIELDS: dict[str, dict[str, type]] = {
    "file_citation": {"file_id": str, "filename": str, "index": int},
    "file_path": {"file_id": str, "index": int},
    "url_citation": {"url": str, "title": str, "start_index": int, "end_index": int},
    "container_file_citation": {
        "container_id": str,
        "file_id": str,
        "filename": str,
        "start_index": int,
        "end_index": int,
    },
}


def _annotations(value: Any, param: str) -> list[dict[str, Any]]:
    out = []
    for index, annotation in enumerate(_list(value, param)):
        where = f"{param}[{index}]"
        kind = annotation.get("type") if isinstance(annotation, dict) else None
        fields = _ANNOTATION_FIELDS.get(kind) if isinstance(kind, str) else None
        if fields is None or not isinstance(annotation, dict):
            raise bad_request(
                f"Invalid value for '{where}.type': expected one of "
                + ", ".join(_ANNOTATION_FIELDS)
                + ".",
                f"{where}.type",
            )
        kept: dict[str, Any] = {"type": kind}
        for name, expected in fields.items():
            field = annotation.get(name)
            if not isinstance(field, expected) or isinstance(field, bool):
                raise bad_request(
                    f"Invalid type for '{where}.{name}': expected "
                    + ("an integer." if expected is int else "a string."),
                    f"{where}.{name}",
                )
            kept[name] = field
        out.append(kept)
    return out


def message_content(item: dict[str, Any], param: str) -> tuple[str, list[dict[str, Any]]]:
    """A message item's role and its content as items show it."""
    role = item.get("role")
    if not isinstance(role, str) or role not in MESSAGE_ROLES:
        raise bad_request(
            f"Invalid value for '{param}.role': expected one of user, assistant, system or "
            "developer.",
            f"{param}.role",
        )
    content = item.get("content")
    if isinstance(content, str):
        if role == "assistant":
            return role, [
                {"type": "output_text", "text": content, "annotations": [], "logprobs": []}
            ]
        return role, [{"type": "input_text", "text": content}]
    if not isinstance(content, list):
        raise bad_request(
            f"Invalid type for '{param}.content': expected a string or an array.",
            f"{param}.content",
        )
    return role, [_content_part(p, role, f"{param}.content[{i}]") for i, p in enumerate(content)]


def _assistants_content(parts: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A message's content as the Assistants API shows it (its prompt reads this too)."""
    out: list[dict[str, Any]] = []
    for part in parts:
        kind = part["type"]
        if kind in ("input_text", "output_text"):
            out.append({"type": "text", "text": {"value": part["text"], "annotations": []}})
        elif kind == "refusal":
            out.append({"type": "refusal", "refusal": part["refusal"]})
        elif kind == "input_image" and "file_id" in part:
            out.append(
                {
                    "type": "image_file",
                    "image_file": {"file_id": part["file_id"], "detail": part["detail"]},
                }
            )
        elif kind == "input_image":
            out.append(
                {
                    "type": "image_url",
                    "image_url": {"url": part["image_url"], "detail": part["detail"]},
                }
            )
    return out


def _list(value: Any, param: str) -> list[Any]:
    if not isinstance(value, list):
        raise bad_request(f"Invalid type for '{param}': expected an array.", param)
    return value


def _texts(value: Any, kind: str, param: str) -> list[dict[str, Any]]:
    """Parts of one kind holding a text (a reasoning item's summary or content)."""
    parts = []
    for index, part in enumerate(_list(value, param)):
        where = f"{param}[{index}]"
        if not isinstance(part, dict):
            raise bad_request(f"Invalid type for '{where}': expected an object.", where)
        parts.append({"type": kind, "text": _text(part.get("text"), f"{where}.text")})
    return parts


def _output(value: Any, param: str) -> str | list[dict[str, Any]]:
    """A function call's output: a string, or input content parts."""
    if isinstance(value, str):
        return value
    parts = []
    for index, part in enumerate(_list(value, param)):
        where = f"{param}[{index}]"
        if isinstance(part, dict) and part.get("type") == "input_text":
            parts.append({"type": "input_text", "text": _text(part.get("text"), f"{where}.text")})
        else:
            parts.append(_content_part(part, "user", where))
    return parts


def compaction_item(summary: str) -> dict[str, Any]:
    """What `/responses/compact` makes of the context it compacted: the summary, carried by
    the client in `encrypted_content` (encoded, not encrypted: the client keeps its own
    context)."""
    packed = json.dumps({"v": 1, "summary": summary}, ensure_ascii=False).encode()
    return {
        "type": "compaction",
        "id": ids.new_id("cmp_"),
        "encrypted_content": base64.urlsafe_b64encode(packed).decode(),
    }


def compaction_summary(content: str) -> str | None:
    """The summary a compaction item of this server holds, or None."""
    try:
        packed = json.loads(base64.urlsafe_b64decode(content.encode()))
    except (ValueError, TypeError, RecursionError):
        return None
    summary = packed.get("summary") if isinstance(packed, dict) else None
    # Decoded text may hold what no model server or database takes (a lone surrogate).
    return storable(summary) if isinstance(summary, str) else None


def _stored_item(item: dict[str, Any], kind: str, param: str) -> dict[str, Any]:
    """An item kept as given, rebuilt from the fields its type has (so that whatever else
    a client sent, the item reads back as OpenAI's shape)."""
    if kind == "compaction":
        content = _text(item.get("encrypted_content"), f"{param}.encrypted_content")
        if compaction_summary(content) is None:
            raise bad_request(
                f"Invalid '{param}.encrypted_content': not a compaction this server made.",
                f"{param}.encrypted_content",
            )
        return {"type": kind, "id": ids.new_id("cmp_"), "encrypted_content": content}
    if kind == "function_call":
        call = {
            "type": kind,
            "id": ids.new_id("fc_"),
            "call_id": _text(item.get("call_id"), f"{param}.call_id"),
            "name": _text(item.get("name"), f"{param}.name"),
            "arguments": _text(item.get("arguments"), f"{param}.arguments"),
            "status": "completed",
        }
        if item.get("namespace") is not None:
            call["namespace"] = _text(item["namespace"], f"{param}.namespace")
        return call
    if kind == "function_call_output":
        return {
            "type": kind,
            "id": ids.new_id("fco_"),
            "call_id": _text(item.get("call_id"), f"{param}.call_id"),
            "output": _output(item.get("output"), f"{param}.output"),
            "status": "completed",
        }
    if kind == "reasoning":
        stored: dict[str, Any] = {
            "type": kind,
            "id": ids.new_id("rs_"),
            "summary": _texts(item.get("summary") or [], "summary_text", f"{param}.summary"),
        }
        if item.get("content") is not None:
            stored["content"] = _texts(item["content"], "reasoning_text", f"{param}.content")
        if item.get("encrypted_content") is not None:
            stored["encrypted_content"] = _text(
                item["encrypted_content"], f"{param}.encrypted_content"
            )
        return stored
    if kind == "file_search_call":
        queries = _list(item.get("queries") or [], f"{param}.queries")
        results = item.get("results")
        return {
            "type": kind,
            "id": ids.new_id("fs_"),
            "status": "completed",
            "queries": [_text(q, f"{param}.queries[{i}]") for i, q in enumerate(queries)],
            "results": None if results is None else _search_results(results, f"{param}.results"),
        }
    code = item.get("code")
    outputs = item.get("outputs")
    return {
        "type": kind,
        "id": ids.new_id("ci_"),
        "status": "completed",
        "container_id": _text(item.get("container_id") or "", f"{param}.container_id"),
        "code": None if code is None else _text(code, f"{param}.code"),
        "outputs": None if outputs is None else _code_outputs(outputs, f"{param}.outputs"),
    }


def _search_results(value: Any, param: str) -> list[dict[str, Any]]:
    results = []
    for index, result in enumerate(_list(value, param)):
        where = f"{param}[{index}]"
        if not isinstance(result, dict):
            raise bad_request(f"Invalid type for '{where}': expected an object.", where)
        score = result.get("score")
        attributes = result.get("attributes")
        results.append(
            {
                "file_id": _text(result.get("file_id") or "", f"{where}.file_id"),
                "filename": _text(result.get("filename") or "", f"{where}.filename"),
                "text": _text(result.get("text") or "", f"{where}.text"),
                "score": float(score) if isinstance(score, int | float) else 0.0,
                "attributes": attributes if isinstance(attributes, dict) else {},
            }
        )
    return results


def _code_outputs(value: Any, param: str) -> list[dict[str, Any]]:
    outputs = []
    for index, output in enumerate(_list(value, param)):
        where = f"{param}[{index}]"
        kind = output.get("type") if isinstance(output, dict) else None
        if kind == "logs":
            outputs.append({"type": "logs", "logs": _text(output.get("logs"), f"{where}.logs")})
        elif kind == "image":
            outputs.append({"type": "image", "url": _text(output.get("url"), f"{where}.url")})
        else:
            raise bad_request(
                f"Invalid value for '{where}.type': expected 'logs' or 'image'.", f"{where}.type"
            )
    return outputs


def build_entries(
    thread_id: str, items: Any, param: str, *, run_id: str | None = None
) -> list[Message | Item]:
    """Rows for input items, in their order (not added to a session)."""
    if not isinstance(items, list):
        raise bad_request(f"Invalid type for '{param}': expected an array.", param)
    stamp = now()
    rows: list[Message | Item] = []
    for index, item in enumerate(items):
        where = f"{param}[{index}]"
        if not isinstance(item, dict):
            raise bad_request(f"Invalid type for '{where}': expected an object.", where)
        kind = item.get("type", "message")
        place = ordinal()
        if kind == "message":
            role, content = message_content(item, where)
            if role in THREAD_ROLES:
                rows.append(
                    Message(
                        id=ids.message_id(),
                        created_at=stamp,
                        thread_id=thread_id,
                        status="completed",
                        completed_at=stamp,
                        role=role,
                        content=_assistants_content(content),
                        item_content=content,
                        run_id=run_id,
                        attachments=[],
                        metadata_={},
                        ordinal=place,
                    )
                )
            else:
                data = {
                    "type": "message",
                    "id": ids.message_id(),
                    "status": "completed",
                    "role": role,
                    "content": content,
                }
                rows.append(Item(**_item_row(thread_id, data, stamp, place)))
        elif isinstance(kind, str) and kind in STORED_TYPES:
            data = _stored_item(item, kind, where)
            rows.append(Item(**_item_row(thread_id, data, stamp, place)))
        else:
            raise bad_request(
                f"Invalid value for '{where}.type': items of type {json.dumps(kind)[:80]} are "
                "not supported by this server.",
                f"{where}.type",
            )
    return rows


def _item_row(thread_id: str, data: dict[str, Any], stamp: int, place: int) -> dict[str, Any]:
    return {
        "id": data["id"],
        "created_at": stamp,
        "thread_id": thread_id,
        "ordinal": place,
        "type": data["type"],
        "data": data,
    }


def entry_item(row: Message | Item) -> dict[str, Any]:
    return message_item(row) if isinstance(row, Message) else row.data


def page(data: list[dict[str, Any]], params: ListParams) -> ItemList:
    """One page of items given oldest first, as a list endpoint answers it (`after` an item
    of the list, in `order`)."""
    if params.order == "desc":
        data = list(reversed(data))
    if params.after is not None:
        position = next((i for i, d in enumerate(data) if d.get("id") == params.after), None)
        if position is None:
            raise bad_request(f"Invalid 'after': no item found with id '{params.after}'.", "after")
        data = data[position + 1 :]
    shown = data[: params.limit]
    return ItemList(
        data=shown,
        first_id=shown[0]["id"] if shown else None,
        last_id=shown[-1]["id"] if shown else None,
        has_more=len(data) > params.limit,
    )
