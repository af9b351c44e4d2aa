"""Talking to an IPython kernel over Jupyter's messaging protocol (jupyter_client).

The kernel binds its ZeroMQ sockets as Unix sockets in the sandbox's own tmpfs; the server
reaches them through `/proc/<pid>/root`, so no host directory is shared with the sandbox.
"""

from __future__ import annotations

import base64
import binascii
import re
import time
from dataclasses import dataclass, field
from typing import Any, cast

import zmq
import zmq.asyncio
from jupyter_client.asynchronous import AsyncKernelClient

_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
CHANNEL_PORTS = {"shell_port": 1, "iopub_port": 2, "stdin_port": 3, "control_port": 4, "hb_port": 5}
CLIENT_PORTS = (1, 2, 3, 4)
"""The sockets the server connects to (not the heartbeat's)."""
MAX_MESSAGE_BYTES = 16 << 20
"""The largest message taken from a kernel (a plot is a few hundred KB): the code could send
gigabytes past the cap the kernel itself applies. A bigger one drops the connection, and a
dropped connection is never made again: the session is then dead."""
RECEIVE_QUEUE = 16
"""Messages a client socket holds unread, at most (with the size cap: its memory bound)."""


def connection_info(socket_base: str, key: str) -> dict[str, Any]:
    """A connection file's content: `ipc` transport, sockets at `<socket_base>-<port>`."""
    return {
        **CHANNEL_PORTS,
        "transport": "ipc",
        "ip": socket_base,
        "key": key,
        "signature_scheme": "hmac-sha256",
        "kernel_name": "python3",
    }


@dataclass
class Outcome:
    logs: str = ""
    images: list[bytes] = field(default_factory=list)
    error: bool = False
    finished: bool = True
    """False when the cell was still running at its time limit (and after the interrupt)."""


class _Collector:
    """Gathers a cell's output up to the caps; past them, drops it and says so once."""

    def __init__(self, max_output: int, max_images: int, max_image_bytes: int) -> None:
        self.parts: list[str] = []
        self.size = 0
        self.cut = False
        self.outcome = Outcome()
        self.max_output = max_output
        self.max_images = max_images
        self.max_image_bytes = max_image_bytes

    def text(self, text: str) -> None:
        if self.cut:
            return
        left = self.max_output - self.size
        if len(text) > left:
            self.parts.append(text[:left])
            self.parts.append("\n[output truncated]\n")
            self.size = self.max_output
            self.cut = True
            return
        self.parts.append(text)
        self.size += len(text)

    def data(self, bundle: dict[str, Any]) -> None:
        png = bundle.get("image/png")
        if isinstance(png, str):
            try:
                image = base64.b64decode(png, validate=False)
            except (binascii.Error, ValueError):
                image = b""
            if (
                image.startswith(b"\x89PNG")
                and len(self.outcome.images) < self.max_images
                and len(image) <= self.max_image_bytes
            ):
                self.outcome.images.append(image)
                return
        plain = bundle.get("text/plain")
        if isinstance(plain, str) and not png:
            self.text(plain if plain.endswith("\n") else plain + "\n")

    def handle(self, msg: dict[str, Any]) -> bool:
        """Take one iopub message; True once the kernel is idle again."""
        kind = msg.get("msg_type") or msg.get("header", {}).get("msg_type")
        content = msg.get("content") or {}
        if kind == "stream":
            self.text(str(content.get("text", "")))
        elif kind in ("execute_result", "display_data"):
            self.data(content.get("data") or {})
        elif kind == "error":
            self.outcome.error = True
            traceback = content.get("traceback") or [
                f"{content.get('ename', 'Error')}: {content.get('evalue', '')}"
            ]
            self.text(_ANSI.sub("", "\n".join(str(line) for line in traceback)) + "\n")
        elif kind == "status" and content.get("execution_state") == "idle":
            return True
        return False

    def result(self) -> Outcome:
        self.outcome.logs = "".join(self.parts)
        return self.outcome


_context: zmq.asyncio.Context | None = None


def _shared_context() -> zmq.asyncio.Context:
    """One ZeroMQ context for every kernel client of the process: a context of its own per
    client would cost each session two I/O threads."""
    global _context
    if _context is None or _context.closed:
        _context = zmq.asyncio.Context()
        # Options every socket made afterwards takes: the sockets are reached through
        # names pinned once (sandbox/bwrap.py); a reconnection would not be.
        _context.setsockopt(zmq.RECONNECT_IVL, -1)
        _context.setsockopt(zmq.MAXMSGSIZE, MAX_MESSAGE_BYTES)
        _context.setsockopt(zmq.RCVHWM, RECEIVE_QUEUE)
        # A send with no connection to take it would wait, and it waits on the event loop
        # (jupyter_client's sends are synchronous): fail at once instead (zmq.Again).
        _context.setsockopt(zmq.SNDTIMEO, 0)
    return _context


class Kernel:
    """A client of one kernel."""

    def __init__(self, info: dict[str, Any]) -> None:
        self.client = AsyncKernelClient(context=_shared_context())
        self.client.load_connection_info(cast(Any, info))
        # No heartbeat channel (a thread per client): the kernel's end is seen as its
        # process's end.
        self.client.start_channels(hb=False)

    async def wait_ready(self, within: float) -> None:
        await self.client.wait_for_ready(timeout=within)

    async def execute(
        self,
        code: str,
        limit: float,
        *,
        grace: float = 3.0,
        max_output: int = 65536,
        max_images: int = 8,
        max_image_bytes: int = 8 << 20,
        silent: bool = False,
    ) -> Outcome:
        """Run a cell. Past `limit` seconds the kernel is asked to interrupt it; if it is not idle
        `grace` seconds later, the outcome is unfinished and the caller kills the kernel.
        `input()` raises in the cell instead of waiting: stdin is not allowed."""
        collector = _Collector(max_output, max_images, max_image_bytes)
        try:
            msg_id = self.client.execute(
                code, silent=silent, store_history=not silent, allow_stdin=False
            )
        except zmq.ZMQError:
            # The connection is gone (and never made again): so is the session.
            collector.outcome.finished = False
            return collector.result()
        deadline = time.monotonic() + limit
        interrupted = False
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                if interrupted:
                    collector.outcome.finished = False
                    return collector.result()
                interrupted = True
                collector.text(f"\n[interrupted: the cell ran past its {limit:g} s limit]\n")
                if not self._interrupt():
                    collector.outcome.finished = False
                    return collector.result()
                deadline = time.monotonic() + grace
                continue
            try:
                msg = await self.client.get_iopub_msg(timeout=left)
            except Exception:
                # queue.Empty (the wait ran out) or a closed channel: the loop decides.
                if not self.client.channels_running:
                    collector.outcome.finished = False
                    return collector.result()
                continue
            if msg.get("parent_header", {}).get("msg_id") != msg_id:
                continue
            if collector.handle(msg):
                if interrupted:
                    collector.outcome.error = True
                return collector.result()

    def _interrupt(self) -> bool:
        """Ask the kernel to interrupt the cell; False when it cannot be reached."""
        # interrupt_mode "message": the kernel signals itself, whatever its pid is here.
        msg = self.client.session.msg("interrupt_request", {})
        try:
            self.client.control_channel.send(msg)
        except zmq.ZMQError:
            return False
        return True

    def close(self) -> None:
        self.client.stop_channels()
