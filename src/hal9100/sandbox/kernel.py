"""Talking to an IPython kernel over Jupyter's messaging protocol (jupyter_client).

The kernel binds its ZeroMQ sockets as Unix sockets in the sandbox's own tmpfs; the server
reaches them through `/proc/<pid>/root`, so no host directory is shared with the sandbox.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
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
IDLE_AFTER_REPLY = 1.0
"""Seconds a cell's output may still arrive after its reply (iopub and shell are separate
connections: the last output and the idle status often come just after the reply)."""
MAX_MESSAGE_BYTES = 16 << 20
"""The largest message taken from a kernel (a plot is a few hundred KB): the code could send
gigabytes past the cap the kernel itself applies. A bigger one drops the connection, and a
dropped connection ends the session."""


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


def _context() -> zmq.asyncio.Context:
    """A ZeroMQ context for one kernel client. One shared by every client of the process
    was tried: on a loaded machine it came to a state where no new client's connection
    completed, and every later session failed to start."""
    context = zmq.asyncio.Context()
    # A connection is made once, when the kernel is known to listen (sandbox/bwrap.py), and
    # never again: the names it went through are in the sandbox, where the code may since
    # have replaced them by links.
    context.setsockopt(zmq.RECONNECT_IVL, -1)
    context.setsockopt(zmq.MAXMSGSIZE, MAX_MESSAGE_BYTES)
    # A send with no connection to take it would wait, and it waits on the event loop
    # (jupyter_client's sends are synchronous): fail at once instead (zmq.Again).
    context.setsockopt(zmq.SNDTIMEO, 0)
    return context


class Kernel:
    """A client of one kernel."""

    def __init__(self, info: dict[str, Any]) -> None:
        self._reader: asyncio.Task[None] | None = None
        self._replies: asyncio.Task[None] | None = None
        # The cell being run: its request's id, and where its messages go.
        self._cell: tuple[str, asyncio.Queue[dict[str, Any]]] | None = None
        self.context = _context()
        self.client = AsyncKernelClient(context=self.context)
        self.client.load_connection_info(cast(Any, info))
        # No heartbeat channel (a thread per client): the kernel's end is seen as its
        # process's end.
        self.client.start_channels(hb=False)

    async def wait_ready(self, within: float) -> None:
        await self.client.wait_for_ready(timeout=within)
        # From now on the kernel's output and replies are read as they come, cell or no
        # cell: what is left unread (a thread of the code printing between cells) would
        # pile up in the sockets' queues, in this process's memory.
        self._reader = asyncio.create_task(self._read(self.client.iopub_channel.socket))
        self._replies = asyncio.create_task(self._read(self.client.shell_channel.socket))

    async def _read(self, socket: zmq.asyncio.Socket) -> None:
        """Hand the current cell the messages answering it; end when the connection drops
        (the code did it, or the kernel sent what no server takes: the session is then
        ended)."""
        session = self.client.session
        monitor = socket.get_monitor_socket(zmq.EVENT_DISCONNECTED | zmq.EVENT_CLOSED)
        try:
            dropped = asyncio.ensure_future(monitor.recv_multipart())
            while True:
                incoming = asyncio.ensure_future(socket.recv_multipart(copy=False))
                done, _ = await asyncio.wait(
                    {incoming, dropped}, return_when=asyncio.FIRST_COMPLETED
                )
                if dropped in done:
                    incoming.cancel()
                    return
                cell = self._cell
                if cell is None:
                    continue  # nobody waits for it: dropped unread
                try:
                    _, parts = session.feed_identities(incoming.result(), copy=False)
                    msg = session.deserialize(parts, content=True, copy=False)
                except Exception:
                    continue  # not a message of the protocol (the code wrote it)
                if msg.get("parent_header", {}).get("msg_id") == cell[0]:
                    cell[1].put_nowait(msg)
        finally:
            dropped.cancel()
            # The socket may be closed already (the client stopped): nothing to undo then.
            with contextlib.suppress(zmq.ZMQError):
                socket.disable_monitor()
            monitor.close(linger=0)

    def _connected(self) -> bool:
        return all(t is not None and not t.done() for t in (self._reader, self._replies))

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
        """Run a cell. Past `limit` seconds the kernel is asked to interrupt it; if it has
        not answered `grace` seconds later, the outcome is unfinished and the caller kills
        the kernel. `input()` raises in the cell instead of waiting: stdin is not allowed."""
        collector = _Collector(max_output, max_images, max_image_bytes)
        try:
            msg_id = self.client.execute(
                code, silent=silent, store_history=not silent, allow_stdin=False
            )
        except zmq.ZMQError:
            # Nothing can take the request (the connection is gone): the session ends.
            collector.outcome.finished = False
            return collector.result()
        messages: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._cell = (msg_id, messages)
        try:
            return await self._collect(collector, messages, limit, grace)
        finally:
            self._cell = None

    async def _collect(
        self,
        collector: _Collector,
        messages: asyncio.Queue[dict[str, Any]],
        limit: float,
        grace: float,
    ) -> Outcome:
        """The cell ends with its `execute_reply` (on the shell channel, which never drops a
        message) and, normally, its `idle` status (on iopub, whose publisher drops what a
        slow reader leaves waiting: then some output is lost, and the reply still ends it)."""
        deadline = time.monotonic() + limit
        interrupted = False
        reply: dict[str, Any] | None = None
        while True:
            now = time.monotonic()
            if reply is None and now >= deadline:
                if interrupted:
                    collector.outcome.finished = False
                    return collector.result()
                interrupted = True
                collector.text(f"\n[interrupted: the cell ran past its {limit:g} s limit]\n")
                if not self._interrupt():
                    collector.outcome.finished = False
                    return collector.result()
                deadline = now + grace
                continue
            if not self._connected():
                collector.outcome.finished = False
                return collector.result()
            wait = min(deadline - now, 1.0) if reply is None else IDLE_AFTER_REPLY
            try:
                msg = await asyncio.wait_for(messages.get(), max(wait, 0.01))
            except TimeoutError:
                if reply is not None:
                    # The reply came and the idle status never did: it was dropped.
                    collector.text("\n[some output was lost]\n")
                    return self._ended(collector, reply, interrupted)
                continue
            if msg.get("msg_type") == "execute_reply":
                reply = msg
                continue
            if collector.handle(msg):
                return self._ended(collector, reply, interrupted)

    @staticmethod
    def _ended(collector: _Collector, reply: dict[str, Any] | None, interrupted: bool) -> Outcome:
        content = (reply or {}).get("content") or {}
        if interrupted or content.get("status") == "error":
            if not collector.outcome.error and content.get("ename"):
                # Its traceback was lost with the output: the reply still names it.
                collector.text(f"{content['ename']}: {content.get('evalue', '')}\n")
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
        for task in (self._reader, self._replies):
            if task is not None:
                task.cancel()
        self.client.stop_channels()
        self.context.destroy(linger=0)
