"""A response's `tools` and `tool_choice` as the engine runs them (the Assistants shapes the
toolset reads), checked as OpenAI checks them."""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal, TypeVar

from pydantic import BaseModel, Field, ValidationError

from hal9100.core.errors import bad_request
from hal9100.core.schemas import RequestModel, _check_json
from hal9100.vector_stores.schemas import ComparisonFilter, CompoundFilter, RankingOptions

M = TypeVar("M", bound=BaseModel)

_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
# Sent on every request by widely used clients (Codex CLI), which work without it: accepted
# and echoed, never offered to the model (this server cannot search the web).
NOT_OFFERED = {
    "web_search",
    "web_search_preview",
    "web_search_preview_2025_03_11",
    "web_search_2025_08_26",
}


def _function(tool: dict[str, Any], param: str) -> dict[str, Any]:
    name = tool.get("name")
    if not isinstance(name, str) or not _NAME.match(name):
        raise bad_request(
            f"Invalid '{param}.name': a function name is 1 to 64 letters, digits, '_' or '-'.",
            f"{param}.name",
        )
    function: dict[str, Any] = {"name": name}
    description = tool.get("description")
    if description is not None:
        if not isinstance(description, str):
            raise bad_request(
                f"Invalid type for '{param}.description': expected a string.",
                f"{param}.description",
            )
        function["description"] = description
    parameters = tool.get("parameters")
    if parameters is not None:
        if not isinstance(parameters, dict):
            raise bad_request(
                f"Invalid type for '{param}.parameters': expected an object.", f"{param}.parameters"
            )
        try:
            _check_json(parameters)
        except ValueError as exc:
            raise bad_request(
                f"Invalid '{param}.parameters': {exc}.", f"{param}.parameters"
            ) from exc
        function["parameters"] = parameters
    strict = tool.get("strict")
    if strict is not None:
        if not isinstance(strict, bool):
            raise bad_request(
                f"Invalid type for '{param}.strict': expected a boolean.", f"{param}.strict"
            )
        function["strict"] = strict
    return {"type": "function", "function": function}


class _FileSearch(RequestModel):
    type: Literal["file_search"]
    vector_store_ids: Annotated[list[str], Field(max_length=16)]
    max_num_results: Annotated[int, Field(ge=1, le=50)] | None = None
    ranking_options: RankingOptions | None = None
    filters: ComparisonFilter | CompoundFilter | None = None


class _AutoContainer(RequestModel):
    type: Literal["auto"]
    file_ids: Annotated[list[str], Field(max_length=20)] = []
    # The sandbox's memory is the server's setting (HAL9100_SANDBOX_MEMORY_MB).
    memory_limit: None = None


class _CodeInterpreter(RequestModel):
    type: Literal["code_interpreter"]
    # Containers are not an object of this server: each conversation (or response) has
    # its own sandbox, as OpenAI's `auto` container.
    container: Literal["auto"] | _AutoContainer


def _checked(model: type[M], tool: dict[str, Any], param: str) -> M:
    try:
        return model.model_validate(tool)
    except ValidationError as exc:
        error = exc.errors()[0]
        where = ".".join(str(p) for p in error["loc"] if not str(p).startswith("<"))
        at = f"{param}.{where}" if where else param
        raise bad_request(f"Invalid '{at}': {error['msg']}.", at) from exc


def namespaced(tools: list[Any] | None) -> dict[str, tuple[str, str]]:
    """The functions offered under a namespace: the name the model calls -> (namespace,
    name), from a run's tools or a response's tools as given."""
    found: dict[str, tuple[str, str]] = {}
    for tool in tools or []:
        if not isinstance(tool, dict):
            continue
        if tool.get("type") == "function" and isinstance(tool.get("namespace"), str):
            function = tool.get("function") or {}
            found[str(function.get("name"))] = (tool["namespace"], str(tool.get("local_name")))
        elif tool.get("type") == "namespace":
            for inner in tool.get("tools") or []:
                if isinstance(inner, dict) and isinstance(inner.get("name"), str):
                    found[offered_name(str(tool["name"]), inner["name"])] = (
                        str(tool["name"]),
                        inner["name"],
                    )
    return found


def offered_name(namespace: str, name: str) -> str:
    """A namespace's function as the model sees it (a function name has no room for more
    than letters, digits, `_` and `-`)."""
    return f"{namespace}__{name}"


def _namespace(
    tool: dict[str, Any], param: str, names: set[str]
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    namespace = tool.get("name")
    if not isinstance(namespace, str) or not _NAME.match(namespace):
        raise bad_request(
            f"Invalid '{param}.name': a namespace is 1 to 64 letters, digits, '_' or '-'.",
            f"{param}.name",
        )
    description = tool.get("description")
    if not isinstance(description, str):
        raise bad_request(
            f"Invalid type for '{param}.description': expected a string.", f"{param}.description"
        )
    inner = tool.get("tools")
    if not isinstance(inner, list) or not inner:
        raise bad_request(f"Invalid '{param}.tools': expected a non-empty array.", f"{param}.tools")
    offered: list[dict[str, Any]] = []
    shown: list[dict[str, Any]] = []
    for index, function in enumerate(inner):
        where = f"{param}.tools[{index}]"
        if not isinstance(function, dict) or function.get("type") != "function":
            raise bad_request(
                f"Invalid value for '{where}.type': a namespace holds function tools on this "
                "server.",
                f"{where}.type",
            )
        converted = _function(function, where)
        local = converted["function"]["name"]
        name = offered_name(namespace, local)
        if len(name) > 64:
            raise bad_request(
                f"Invalid '{where}.name': '{name}' (the namespace and the name) is longer "
                "than 64 characters.",
                f"{where}.name",
            )
        if name in names:
            raise bad_request(f"Duplicate function name '{name}' in tools.", f"{where}.name")
        names.add(name)
        described = converted["function"].get("description")
        converted["function"]["name"] = name
        converted["function"]["description"] = (
            f"{description} {described}".strip() if described else description
        )
        offered.append({**converted, "namespace": namespace, "local_name": local})
        shown.append(
            {
                "type": "function",
                "name": local,
                "description": described,
                "parameters": converted["function"].get("parameters"),
                "strict": converted["function"].get("strict", True),
            }
        )
    given = {"type": "namespace", "name": namespace, "description": description, "tools": shown}
    return given, offered


def run_tools(tools: list[Any] | None) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(the tools as given, to echo; the tools the run offers the model)."""
    given: list[dict[str, Any]] = []
    offered: list[dict[str, Any]] = []
    names: set[str] = set()
    builtins: set[str] = set()
    for index, tool in enumerate(tools or []):
        param = f"tools[{index}]"
        if not isinstance(tool, dict):
            raise bad_request(f"Invalid type for '{param}': expected an object.", param)
        kind = tool.get("type")
        if kind == "function":
            converted = _function(tool, param)
            name = converted["function"]["name"]
            if name in names:
                raise bad_request(f"Duplicate function name '{name}' in tools.", f"{param}.name")
            names.add(name)
            offered.append(converted)
            given.append(
                {
                    "type": "function",
                    "name": name,
                    "description": converted["function"].get("description"),
                    "parameters": converted["function"].get("parameters"),
                    "strict": converted["function"].get("strict", True),
                }
            )
        elif kind == "namespace":
            group, functions = _namespace(tool, param, names)
            given.append(group)
            offered.extend(functions)
        elif kind in ("file_search", "code_interpreter") and kind in builtins:
            raise bad_request(f"Only one '{kind}' tool may be given.", f"{param}.type")
        elif kind == "file_search":
            builtins.add(kind)
            search = _checked(_FileSearch, tool, param)
            options: dict[str, Any] = {}
            if search.max_num_results is not None:
                options["max_num_results"] = search.max_num_results
            if search.ranking_options is not None:
                options["ranking_options"] = search.ranking_options.model_dump(mode="json")
            converted = {
                "type": "file_search",
                "file_search": options,
                "vector_store_ids": search.vector_store_ids,
            }
            if search.filters is not None:
                converted["filters"] = search.filters.model_dump(mode="json", exclude_none=True)
            offered.append(converted)
            given.append(
                {
                    "type": "file_search",
                    "vector_store_ids": search.vector_store_ids,
                    "filters": converted.get("filters"),
                    "max_num_results": search.max_num_results or 20,
                    "ranking_options": options.get("ranking_options")
                    or {"ranker": "auto", "score_threshold": 0.0},
                }
            )
        elif kind == "code_interpreter":
            builtins.add(kind)
            code = _checked(_CodeInterpreter, tool, param)
            file_ids = code.container.file_ids if isinstance(code.container, _AutoContainer) else []
            offered.append({"type": "code_interpreter", "file_ids": list(file_ids)})
            given.append({"type": "code_interpreter", "container": tool["container"]})
        elif isinstance(kind, str) and kind in NOT_OFFERED:
            given.append(dict(tool))
        else:
            shown = kind if isinstance(kind, str) else type(kind).__name__
            raise bad_request(
                f"Invalid value for '{param}.type': tools of type '{shown[:64]}' are not "
                "supported by this server (function, file_search and code_interpreter are).",
                f"{param}.type",
            )
    clash = names & builtins
    if clash:
        name = sorted(clash)[0]
        raise bad_request(
            f"A function may not be named '{name}' beside the built-in '{name}' tool.", "tools"
        )
    return given, offered


def run_tool_choice(choice: Any, offered: list[dict[str, Any]]) -> tuple[Any, Any]:
    """(the tool_choice to echo, the run's tool_choice in the Assistants shape)."""
    if choice is None:
        return "auto", None
    if choice in ("none", "auto", "required"):
        return choice, choice
    if isinstance(choice, dict) and choice.get("type") in ("file_search", "code_interpreter"):
        kind = choice["type"]
        if not any(t["type"] == kind for t in offered):
            raise bad_request(
                f"Tool choice '{kind}' is not one of the tools in 'tools'.", "tool_choice"
            )
        return {"type": kind}, {"type": kind}
    if isinstance(choice, dict) and choice.get("type") == "function":
        name = choice.get("name")
        if not any(t.get("function", {}).get("name") == name for t in offered):
            raise bad_request(
                f"Tool choice '{name}' is not one of the functions in 'tools'.", "tool_choice"
            )
        return {"type": "function", "name": name}, {"type": "function", "function": {"name": name}}
    raise bad_request(
        "Invalid value for 'tool_choice': expected 'none', 'auto', 'required' or "
        '{"type": "function", "name": ...}.',
        "tool_choice",
    )
