"""Run by the kernel at start, inside the sandbox: cap what a cell may print.

A cell printing in a loop would otherwise flood the messages to the server; past the cap
the rest of the cell's output is dropped here, and the server caps again on its side (this
code runs where the model's code does, which may undo it).
"""

import os
import sys

_CAP = int(os.environ.get("HAL9100_OUTPUT_BYTES", "65536"))
_state = {"left": _CAP, "noted": False}


def _reset(*_: object) -> None:
    _state["left"] = _CAP
    _state["noted"] = False


def _capped(stream: object) -> None:
    write = stream.write  # type: ignore[attr-defined]

    def capped_write(text: str) -> int:
        left = _state["left"]
        if left <= 0:
            if not _state["noted"]:
                _state["noted"] = True
                write("\n[output truncated]\n")
            return len(text)
        _state["left"] = left - len(text)
        if len(text) > left:
            write(text[:left])
            _state["noted"] = True
            write("\n[output truncated]\n")
            return len(text)
        return write(text)

    stream.write = capped_write  # type: ignore[attr-defined]


_capped(sys.stdout)
_capped(sys.stderr)
get_ipython().events.register("pre_run_cell", _reset)  # type: ignore[name-defined]  # noqa: F821

# Rich output (a cell's last value, display()) is capped too: its text like the streams', and
# any other form past a size a message may have (the server drops the connection of a bigger
# one, which ends the session) is left out.
_RICH_CAP = int(os.environ.get("HAL9100_RICH_BYTES", str(12 << 20)))


def _capped_bundle(data: object) -> object:
    if not isinstance(data, dict):
        return data
    out = {}
    for mime, value in data.items():
        if isinstance(value, str) and mime == "text/plain" and len(value) > _CAP:
            value = value[:_CAP] + "\n[output truncated]"
        elif isinstance(value, (str, bytes)) and len(value) > _RICH_CAP:
            continue
        out[mime] = value
    return out or {"text/plain": "[output too large to show]"}


def _cap_rich() -> None:
    shell = get_ipython()  # type: ignore[name-defined]  # noqa: F821
    publish = shell.display_pub.publish

    def capped_publish(data: object, *args: object, **kwargs: object) -> object:
        return publish(_capped_bundle(data), *args, **kwargs)

    shell.display_pub.publish = capped_publish
    hook = shell.displayhook
    write = hook.write_format_data

    def capped_write(format_dict: object, *args: object, **kwargs: object) -> object:
        return write(_capped_bundle(format_dict), *args, **kwargs)

    hook.write_format_data = capped_write


_cap_rich()
