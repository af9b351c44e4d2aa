"""A response's `tools` and `tool_choice` as the engine runs them (the Assistants shapes the
toolset reads), checked as OpenAI checks them."""

from __future__ import annotations

import re
from typing import Any

from hal9100.core.errors import bad_request
from hal9100.core.schemas import _check_json

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


def run_tools(tools: list[Any] | None) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(the tools as given, to echo; the tools the run offers the model)."""
    given: list[dict[str, Any]] = []
    offered: list[dict[str, Any]] = []
    names: set[str] = set()
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
        elif isinstance(kind, str) and kind in NOT_OFFERED:
            given.append(dict(tool))
        else:
            shown = kind if isinstance(kind, str) else type(kind).__name__
            raise bad_request(
                f"Invalid value for '{param}.type': tools of type '{shown[:64]}' are not "
                "supported by this server (function tools are; file_search and "
                "code_interpreter are on their way to the Responses API).",
                f"{param}.type",
            )
    return given, offered


def run_tool_choice(choice: Any, offered: list[dict[str, Any]]) -> tuple[Any, Any]:
    """(the tool_choice to echo, the run's tool_choice in the Assistants shape)."""
    if choice is None:
        return "auto", None
    if choice in ("none", "auto", "required"):
        return choice, choice
    if isinstance(choice, dict) and choice.get("type") == "function":
        name = choice.get("name")
        if not any(t["function"]["name"] == name for t in offered):
            raise bad_request(
                f"Tool choice '{name}' is not one of the functions in 'tools'.", "tool_choice"
            )
        return {"type": "function", "name": name}, {"type": "function", "function": {"name": name}}
    raise bad_request(
        "Invalid value for 'tool_choice': expected 'none', 'auto', 'required' or "
        '{"type": "function", "name": ...}.',
        "tool_choice",
    )
