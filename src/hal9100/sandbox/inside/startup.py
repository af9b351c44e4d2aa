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
