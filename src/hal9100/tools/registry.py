"""The tools of a run, sorted into what the model is offered and who runs each function.

Function tools are the client's (the run stops at `requires_action` for them); every other
tool type with an entry in `SERVER_TOOLS` is run by the server: `action` (tools/action/),
`file_search` (tools/file_search.py) and `code_interpreter` (tools/code_interpreter.py).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from hal9100.config import Settings
from hal9100.llm.base import FunctionTool
from hal9100.tools.action import ActionTool
from hal9100.tools.action.spec import parse_in_thread
from hal9100.tools.base import ServerTool
from hal9100.tools.code_interpreter import CodeInterpreterTool
from hal9100.tools.file_search import FileSearchTool

SERVER_TOOLS: dict[str, Callable[[dict[str, Any], Settings], ServerTool]] = {
    "action": ActionTool.from_definition,
    "file_search": FileSearchTool.from_definition,
    "code_interpreter": CodeInterpreterTool.from_definition,
}


@dataclass(slots=True)
class Toolset:
    # Every function the model is offered, the client's first, in the run's order.
    functions: list[FunctionTool] = field(default_factory=list)
    # The server-side tool behind each server-side function name.
    server: dict[str, ServerTool] = field(default_factory=dict)

    @property
    def names(self) -> set[str]:
        return {f.name for f in self.functions}


def toolset(definitions: list[dict[str, Any]], settings: Settings) -> Toolset:
    out = Toolset()
    for definition in definitions:
        if definition.get("type") == "function":
            spec = definition["function"]
            out.functions.append(
                FunctionTool(
                    name=spec["name"],
                    description=spec.get("description"),
                    parameters=spec.get("parameters"),
                    strict=spec.get("strict"),
                )
            )
    for definition in definitions:
        factory = SERVER_TOOLS.get(str(definition.get("type")))
        if factory is None:
            continue
        tool = factory(definition, settings)
        for function in tool.functions():
            # Creation refuses a name offered twice; a clash here means the stored tools
            # predate that check, and the client's function keeps the name.
            if function.name in out.names:
                continue
            out.server[function.name] = tool
            out.functions.append(
                FunctionTool(
                    name=function.name,
                    description=function.description,
                    parameters=function.parameters,
                )
            )
    return out


async def build_toolset(definitions: list[dict[str, Any]], settings: Settings) -> Toolset:
    """`toolset`, built in the spec parsers' threads when an action tool is among the
    definitions: an action spec this process has not parsed yet takes seconds, which on the
    event loop would stall every run of the worker (their lease renewals too). Runs without
    one, the common case on the hot path, are built in place."""
    if any(d.get("type") == "action" for d in definitions):
        return await parse_in_thread(toolset, definitions, settings)
    return toolset(definitions, settings)
