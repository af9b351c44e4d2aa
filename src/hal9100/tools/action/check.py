"""The checks of a request's `tools` that parse action specs: each spec's own (OpenAPI
validation, functions), then the functions' names across all the tools.

Request validation keeps only the cheap checks (types, the specs' sizes, headers); parsing a
spec of a megabyte takes seconds, so the services run these in a spec-parsing thread
(`parse_in_thread`) rather than on the event loop that serves every other request and stream
of the process.
"""

from __future__ import annotations

from typing import Any

from hal9100.core.errors import bad_request
from hal9100.tools.action.spec import (
    MAX_FUNCTIONS,
    ActionSpecError,
    ParsedSpec,
    check_spec,
    function_names,
    parse_in_thread,
)


def _has_action(tools: list[dict[str, Any]]) -> bool:
    return any(tool.get("type") == "action" for tool in tools)


async def check_tools(tools: list[dict[str, Any]]) -> None:
    """Refuse, with a 400 naming the tool, a request's `tools` (as plain data) whose action
    spec cannot be used or whose functions cannot all be offered together. Leaves each spec's
    parse in the cache that `function_names` and the engine read."""
    if _has_action(tools):
        await parse_in_thread(_check_tools, tools)
    else:
        # Function tools only: nothing slow, and no thread hop.
        _check_names(tools, {})


async def offered_functions(tools: list[dict[str, Any]]) -> set[str]:
    """`function_names` off the event loop when a spec may need parsing (stored tools that
    this process has not parsed yet)."""
    if _has_action(tools):
        return await parse_in_thread(function_names, tools)
    return function_names(tools)


def _check_tools(tools: list[dict[str, Any]]) -> None:
    parsed: dict[int, ParsedSpec] = {}
    for index, tool in enumerate(tools):
        if tool.get("type") != "action":
            continue
        try:
            parsed[index] = check_spec(tool["data"]["openapi_spec"])
        except ActionSpecError as exc:
            param = f"tools[{index}].data.openapi_spec"
            raise bad_request(f"Invalid value for '{param}': {exc}", param) from None
    _check_names(tools, parsed)


def _check_names(tools: list[dict[str, Any]], parsed: dict[int, ParsedSpec]) -> None:
    """The model calls a function by name alone, so one name offered twice across a run's
    tools (two function tools, two action specs, a function and an operation) could not
    say which one the model meant. The later tool is the one refused."""
    owners: dict[str, int] = {}
    for index, tool in enumerate(tools):
        if tool.get("type") == "function":
            names = [str(tool["function"]["name"])]
        elif index in parsed:
            names = list(parsed[index].operations)
        else:
            continue
        for name in names:
            first = owners.setdefault(name, index)
            param = f"tools[{index}]"
            if first != index:
                raise bad_request(
                    f"Invalid value for '{param}': the function name '{name}' is already "
                    f"offered by tools[{first}]: the functions of an assistant's or a run's "
                    "tools need unique names",
                    param,
                )
            if len(owners) > MAX_FUNCTIONS:
                raise bad_request(
                    f"Invalid value for '{param}': the tools offer more than {MAX_FUNCTIONS} "
                    "functions (operations of action tools count one each), more than a model "
                    "server takes in one request",
                    param,
                )
