"""Slow and stalled clients of streamed responses (issue 9, finding 3): a download that is
opened and never read, or read very slowly, and streamed runs whose client stops reading, hold
no database connection while their bytes wait. Embedded SQLite has one connection, so a
single held one froze every other route; in production mode more stalled downloads are opened
than the PostgreSQL pool of every API process holds."""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Iterator

import httpx
import pytest

from deployments import Deployment

# Several times what the server's socket send buffer (net.ipv4.tcp_wmem max, 4 MiB here), its
# write buffer and one storage chunk can absorb, so a reader that stops stalls the response.
FILE_BYTES = 16 * 1024 * 1024
# The stalled reader's receive window: fixed (set before connecting), so the kernel cannot
# grow it to swallow the whole file.
RECEIVE_WINDOW = 16 * 1024
# db/engine.py: pool_size 10 plus max_overflow 10 per API process in production mode.
POOL_PER_PROCESS = 20
# Every other request must answer well within this (SQLAlchemy's pool waits 30 s).
PROMPT_SECONDS = 5.0


def _stalled_per_process(server: Deployment) -> int:
    # Embedded: one connection in all, so a single held one is enough to show it; production:
    # more than one API process's whole pool, on every process.
    return 3 if server.mode == "embedded" else POOL_PER_PROCESS + 2


@pytest.fixture
def big_file(http: httpx.Client) -> str:
    uploaded = http.post(
        "/v1/files",
        files={"file": ("big.bin", os.urandom(FILE_BYTES))},
        data={"purpose": "assistants"},
        timeout=120,
    )
    assert uploaded.status_code == 200, uploaded.text
    file_id: str = uploaded.json()["id"]
    return file_id


def _open_raw(base_url: str, method: str, path: str, body: bytes = b"") -> socket.socket:
    """Send a request on a raw socket with a small receive window and read only the status
    line and headers: the response is then started on the server, and never read further."""
    url = httpx.URL(base_url)
    assert url.host and url.port
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_WINDOW)
    sock.settimeout(30)
    sock.connect((url.host, url.port))
    head = (
        f"{method} {path} HTTP/1.1\r\nHost: {url.host}:{url.port}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    sock.sendall(head.encode() + body)
    received = b""
    while b"\r\n\r\n" not in received:
        chunk = sock.recv(1024)
        assert chunk, f"connection closed before the headers: {received!r}"
        received += chunk
    assert received.startswith(b"HTTP/1.1 200"), received[:300]
    return sock


@pytest.fixture
def sockets() -> Iterator[list[socket.socket]]:
    opened: list[socket.socket] = []
    yield opened
    for sock in opened:
        sock.close()


def _assert_others_answer(http: httpx.Client, file_id: str | None = None) -> None:
    """Routes that need the database answer 200, promptly, on every API process (the `http`
    fixture goes round-robin)."""
    calls: list[tuple[str, str, object]] = [
        ("POST", "/v1/assistants", {"model": "scripted-model", "name": "still here"}),
        ("GET", "/v1/assistants", None),
        ("POST", "/v1/threads", {}),
        ("GET", "/v1/files", None),
    ]
    if file_id is not None:
        calls.append(("GET", f"/v1/files/{file_id}", None))
    for _ in range(2):
        for method, path, body in calls:
            started = time.monotonic()
            answer = http.request(method, path, json=body, timeout=PROMPT_SECONDS)
            elapsed = time.monotonic() - started
            assert answer.status_code == 200, (method, path, answer.status_code, answer.text)
            assert elapsed < PROMPT_SECONDS, (method, path, elapsed)


def _assert_download_whole(http: httpx.Client, file_id: str) -> None:
    size = 0
    with http.stream("GET", f"/v1/files/{file_id}/content", timeout=60) as answer:
        assert answer.status_code == 200
        for chunk in answer.iter_bytes():
            size += len(chunk)
    assert size == FILE_BYTES


def test_stalled_downloads_hold_no_database_connection(
    server: Deployment, http: httpx.Client, big_file: str, sockets: list[socket.socket]
) -> None:
    per_process = _stalled_per_process(server)
    for url in server.urls:
        for _ in range(per_process):
            sockets.append(_open_raw(url, "GET", f"/v1/files/{big_file}/content"))
    _assert_others_answer(http, big_file)
    for sock in sockets:
        sock.close()
    sockets.clear()
    # The abandoned downloads are cleaned up, and a whole download still goes through.
    _assert_download_whole(http, big_file)
    _assert_others_answer(http, big_file)


def test_slow_readers_hold_no_database_connection(
    server: Deployment, http: httpx.Client, big_file: str, sockets: list[socket.socket]
) -> None:
    per_process = _stalled_per_process(server)
    for url in server.urls:
        for _ in range(per_process):
            sockets.append(_open_raw(url, "GET", f"/v1/files/{big_file}/content"))
    stop = threading.Event()
    received = [0]

    def trickle() -> None:
        # About 16 KiB per reader every 50 ms: a transfer that would take tens of seconds.
        # Reads first, so even a check that ends at once saw bytes flow.
        while True:
            for sock in sockets:
                received[0] += len(sock.recv(RECEIVE_WINDOW))
            if stop.wait(0.05):
                return

    reader = threading.Thread(target=trickle, daemon=True)
    reader.start()
    try:
        _assert_others_answer(http, big_file)
    finally:
        stop.set()
        reader.join(10)
    assert received[0] > 0
    for sock in sockets:
        sock.close()
    sockets.clear()
    _assert_download_whole(http, big_file)


def test_streamed_runs_whose_client_stops_reading_hold_no_connection(
    server: Deployment, http: httpx.Client, sockets: list[socket.socket]
) -> None:
    assistant = http.post("/v1/assistants", json={"model": "scripted-model"}).json()["id"]
    # A slow answer keeps each stream open for seconds while its client reads nothing more.
    content = "[[tokens:12]][[slow:400]] keep streaming"
    for url in server.urls:
        for _ in range(3):
            thread = httpx.post(f"{url}/v1/threads", json={}).json()["id"]
            body = f'{{"assistant_id": "{assistant}", "stream": true, "additional_messages": '
            body += f'[{{"role": "user", "content": "{content}"}}]}}'
            sockets.append(_open_raw(url, "POST", f"/v1/threads/{thread}/runs", body.encode()))
    _assert_others_answer(http)
