"""The action tool: an HTTP API described by an OpenAPI 3.x spec, called by the server for
the model. See spec (checking and functions), net (where calls may go), fetch (the call on the
wire), tool (the ServerTool) and redact (data.headers are write-only)."""

from hal9100.tools.action.net import refusal
from hal9100.tools.action.redact import REDACTED, redact_tools, restore_redacted
from hal9100.tools.action.spec import ActionSpecError
from hal9100.tools.action.tool import ActionTool

__all__ = [
    "REDACTED",
    "ActionSpecError",
    "ActionTool",
    "redact_tools",
    "refusal",
    "restore_redacted",
]
