"""Files through the official SDK: upload, purposes, listing, exact contents back (text,
binary, several megabytes), expiry, delete, and the errors of a bad upload."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from deployments import Deployment, RoundRobinTransport
from openapi_contract import make_validating_http_client


@pytest.fixture
def raw(server: Deployment) -> Iterator[httpx.Client]:
    """Plain HTTP (spread over every API process) whose JSON answers are still checked
    against OpenAI's spec."""
    transport = RoundRobinTransport(server.urls) if len(server.urls) > 1 else None
    with make_validating_http_client(
        require=False, base_url=server.url, timeout=30, transport=transport
    ) as sdk_less:
        yield sdk_less


def test_upload_bytes_retrieve_and_content(client: openai.OpenAI) -> None:
    data = b"hello, HAL\n"
    created = client.files.create(file=("name.txt", data), purpose="assistants")
    assert created.id.startswith("file-")
    assert created.object == "file"
    assert created.filename == "name.txt"
    assert created.bytes == len(data)
    assert created.purpose == "assistants"
    assert created.status == "processed"
    assert created.expires_at is None
    assert isinstance(created.created_at, int)
    assert client.files.retrieve(created.id) == created
    assert client.files.content(created.id).read() == data


def test_upload_from_a_real_path(client: openai.OpenAI, tmp_path: Path) -> None:
    path = tmp_path / "report.csv"
    path.write_bytes(b"city,temp\nParis,21\n")
    with path.open("rb") as handle:
        created = client.files.create(file=handle, purpose="user_data")
    assert created.filename == "report.csv"
    assert created.bytes == path.stat().st_size
    assert created.purpose == "user_data"
    from_path = client.files.create(file=path, purpose="assistants")
    assert from_path.filename == "report.csv"
    assert client.files.content(from_path.id).read() == path.read_bytes()


def test_binary_content_round_trips_exactly(client: openai.OpenAI) -> None:
    data = bytes(range(256)) * 17 + b"\x00\r\n\xff"
    created = client.files.create(file=("all-bytes.bin", data), purpose="assistants")
    assert created.bytes == len(data)
    assert client.files.content(created.id).read() == data


def test_large_upload_streams_through(client: openai.OpenAI, raw: httpx.Client) -> None:
    # ~5 MB: larger than the 1 MB spool and chunk sizes, so both directions go in pieces.
    data = os.urandom(5 * 1024 * 1024 + 12345)
    created = client.files.create(file=("big.bin", data), purpose="assistants")
    assert created.bytes == len(data)
    digest = hashlib.sha256()
    size = chunks = 0
    with client.files.with_streaming_response.content(created.id) as response:
        for chunk in response.iter_bytes():
            digest.update(chunk)
            size += len(chunk)
            chunks += 1
    assert size == len(data)
    assert digest.digest() == hashlib.sha256(data).digest()
    assert chunks > 1
    # The server streams the body (chunked) rather than building it whole in memory.
    with raw.stream("GET", f"/v1/files/{created.id}/content") as streamed:
        assert streamed.status_code == 200
        assert streamed.headers.get("transfer-encoding") == "chunked"
        assert streamed.read() == data


# The SDK's FileObject.purpose Literal (openai 3.x) has no "evals", although uploads accept it
# and OpenAI answers it; with strict response validation the SDK cannot parse such a file, so
# "evals" goes over raw HTTP (still validated against the spec, which allows it).
@pytest.mark.parametrize("purpose", ["assistants", "vision", "user_data", "batch", "fine-tune"])
def test_every_purpose_is_accepted(client: openai.OpenAI, purpose: str) -> None:
    created = client.files.create(file=(f"{purpose}.jsonl", b"{}\n"), purpose=purpose)  # type: ignore[arg-type]
    assert created.purpose == purpose
    assert client.files.retrieve(created.id).purpose == purpose


def test_evals_purpose(raw: httpx.Client) -> None:
    created = raw.post("/v1/files", files={"file": ("e.jsonl", b"{}\n")}, data={"purpose": "evals"})
    assert created.status_code == 200, created.text
    body = created.json()
    assert body["purpose"] == "evals" and body["bytes"] == 3
    assert raw.get(f"/v1/files/{body['id']}").json() == body
    assert raw.get(f"/v1/files/{body['id']}/content").content == b"{}\n"
    listed = raw.get("/v1/files", params={"purpose": "evals"}).json()
    assert listed["data"][0] == body
    assert all(f["purpose"] == "evals" for f in listed["data"])


def test_invalid_purpose_is_400(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as err:
        client.files.create(file=("x.txt", b"x"), purpose="backup")  # type: ignore[arg-type]
    assert err.value.body["param"] == "purpose"  # type: ignore[index]
    assert "backup" in err.value.body["message"]  # type: ignore[index]


def test_list_filters_orders_and_pages(client: openai.OpenAI, raw: httpx.Client) -> None:
    # The server is shared: compare only this test's files, which are the newest "vision".
    made = [client.files.create(file=(f"v{i}.png", b"png"), purpose="vision").id for i in range(5)]
    other = client.files.create(file=("a.txt", b"a"), purpose="assistants").id

    vision = client.files.list(purpose="vision", limit=10_000)
    listed = [f.id for f in vision.data]
    assert all(f.purpose == "vision" for f in vision.data)
    assert other not in listed
    assert listed[:5] == made[::-1]  # newest first by default

    asc = client.files.list(purpose="vision", order="asc", limit=10_000)
    assert [f.id for f in asc.data if f.id in made] == made

    page = client.files.list(purpose="vision", limit=2)
    assert [f.id for f in page.data] == [made[4], made[3]]
    assert page.has_more is True
    after = client.files.list(purpose="vision", limit=2, after=made[3])
    assert [f.id for f in after.data] == [made[2], made[1]]
    asc_after = client.files.list(purpose="vision", order="asc", limit=2, after=made[1])
    assert [f.id for f in asc_after.data] == [made[2], made[3]]

    # The SDK's auto-pagination walks the `after` cursors.
    walked = [
        f.id for f in client.files.list(purpose="vision", order="asc", limit=2, after=made[0])
    ]
    assert walked[:4] == made[1:]

    # Unfiltered (raw: other tests' "evals" files are beyond the SDK's FileObject).
    everything = raw.get("/v1/files", params={"limit": 10_000}).json()
    ids = [f["id"] for f in everything["data"]]
    assert other in ids and set(made) <= set(ids)
    assert ids.index(other) < min(ids.index(i) for i in made)
    assert everything["has_more"] is False


def test_list_bad_parameters(raw: httpx.Client) -> None:
    for params, param in (
        ({"limit": 0}, "limit"),
        ({"order": "newest"}, "order"),
        ({"after": "file-doesnotexist"}, "after"),
    ):
        bad = raw.get("/v1/files", params=params)
        assert bad.status_code == 400, params
        assert bad.json()["error"]["param"] == param


def test_delete_then_404(client: openai.OpenAI, raw: httpx.Client) -> None:
    created = client.files.create(file=("gone.txt", b"bye"), purpose="assistants")
    deleted = raw.delete(f"/v1/files/{created.id}")
    assert deleted.status_code == 200
    assert deleted.json() == {"id": created.id, "object": "file", "deleted": True}
    for call in (
        lambda: client.files.retrieve(created.id),
        lambda: client.files.content(created.id),
        lambda: client.files.delete(created.id),
    ):
        with pytest.raises(openai.NotFoundError) as err:
            call()
        assert err.value.body == {  # type: ignore[comparison-overlap]
            "message": f"No file found with id '{created.id}'.",
            "type": "invalid_request_error",
            "param": None,
            "code": None,
        }
    assert created.id not in [f.id for f in client.files.list(purpose="assistants").data]

    via_sdk = client.files.create(file=("gone2.txt", b"bye"), purpose="assistants")
    result = client.files.delete(via_sdk.id)
    assert result.id == via_sdk.id and result.deleted is True and result.object == "file"


def test_expires_after(client: openai.OpenAI) -> None:
    created = client.files.create(
        file=("temp.txt", b"temporary"),
        purpose="assistants",
        expires_after={"anchor": "created_at", "seconds": 3600},
    )
    assert created.expires_at == created.created_at + 3600
    assert client.files.retrieve(created.id).expires_at == created.expires_at
    for seconds in (10, 2_592_001):
        with pytest.raises(openai.BadRequestError) as err:
            client.files.create(
                file=("temp.txt", b"x"),
                purpose="assistants",
                expires_after={"anchor": "created_at", "seconds": seconds},
            )
        assert err.value.body["param"] == "expires_after.seconds"  # type: ignore[index]
    with pytest.raises(openai.BadRequestError) as err:
        client.files.create(
            file=("temp.txt", b"x"),
            purpose="assistants",
            expires_after={"anchor": "last_active_at", "seconds": 3600},  # type: ignore[typeddict-item]
        )
    assert err.value.body["param"] == "expires_after.anchor"  # type: ignore[index]


def test_bad_uploads_are_400_in_openai_shape(raw: httpx.Client) -> None:
    no_file = raw.post("/v1/files", data={"purpose": "assistants"})
    assert no_file.status_code == 400
    assert no_file.json() == {
        "error": {
            "message": "Missing required parameter: 'file'.",
            "type": "invalid_request_error",
            "param": "file",
            "code": None,
        }
    }
    no_purpose = raw.post("/v1/files", files={"file": ("a.txt", b"a")})
    assert no_purpose.status_code == 400
    assert no_purpose.json()["error"]["param"] == "purpose"
    as_json = raw.post("/v1/files", json={"purpose": "assistants", "file": "abc"})
    assert as_json.status_code == 400
    assert set(as_json.json()["error"]) == {"message", "type", "param", "code"}
    bad_seconds = raw.post(
        "/v1/files",
        files={"file": ("a.txt", b"a")},
        data={
            "purpose": "assistants",
            "expires_after[anchor]": "created_at",
            "expires_after[seconds]": "soon",
        },
    )
    assert bad_seconds.status_code == 400
    assert bad_seconds.json()["error"]["param"] == "expires_after.seconds"
