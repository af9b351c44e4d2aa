"""Files through the official SDK: upload, purposes, listing, exact contents back (text,
binary, several megabytes), expiry, delete, and the errors of a bad upload."""

from __future__ import annotations

import email.message
import email.utils
import hashlib
import os
import re
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import unquote

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


# The header as every download sends it: an ASCII fallback in a quoted string with nothing to
# escape, then the exact name percent-encoded (RFC 6266, RFC 5987). Nothing else fits.
_DISPOSITION = re.compile(
    r"attachment; filename=\"([ !#$&-:<-\[\]-~]*)\"; filename\*=UTF-8''([A-Za-z0-9%._~-]+)"
)


def _disposition_name(header: str) -> str:
    """The name a client reads from a download's Content-Disposition, checked two ways: the
    exact shape above, and the standard library's RFC 2231 parser."""
    assert header.isascii(), header
    shape = _DISPOSITION.fullmatch(header)
    assert shape is not None, header
    name = unquote(shape.group(2), errors="strict")
    parsed = email.message.Message()
    parsed["Content-Disposition"] = header
    params = parsed.get_params(header="content-disposition")
    assert params is not None and [key for key, _ in params] == [
        "attachment",
        "filename",
        "filename",  # filename*, decoded into a (charset, language, value) triple
    ]
    assert email.utils.collapse_rfc2231_value(params[2][1]) == name
    return name


def _assert_served_as(raw: httpx.Client, file_id: str, filename: str) -> None:
    assert raw.get(f"/v1/files/{file_id}").json()["filename"] == filename
    content = raw.get(f"/v1/files/{file_id}/content")
    assert content.status_code == 200
    assert _disposition_name(content.headers["content-disposition"]) == filename


LONG_ASCII = "x" * 300 + ".pdf"
LONG_CJK = "报" * 200 + ".txt"


@pytest.mark.parametrize(
    ("sent", "stored"),
    [
        ("报告.txt", "报告.txt"),
        ("été ☃ 🙂.md", "été ☃ 🙂.md"),
        ("../../etc/passwd", "passwd"),
        ("C:\\Users\\x\\a.txt", "a.txt"),
        ("dir\\sub/../name.csv", "name.csv"),
        # httpx sends C0 controls percent-encoded (as browsers do); DEL and C1 as they are.
        ("bell\x7f\x85\x9f.txt", "bell.txt"),
        ("evil\u202etxt.exe", "evil\u202etxt.exe"),
        (LONG_ASCII, "x" * 251 + ".pdf"),
        (LONG_CJK, "报" * 83 + ".txt"),
        ("y" * 300, "y" * 255),
        ("   ", "upload"),
        ("..", "upload"),
        ("somewhere/", "upload"),
    ],
)
def test_filenames_are_cleaned_and_served_back(
    client: openai.OpenAI, raw: httpx.Client, sent: str, stored: str
) -> None:
    created = client.files.create(file=(sent, b"data"), purpose="assistants")
    assert created.filename == stored
    assert len(stored.encode()) <= 255
    assert client.files.retrieve(created.id).filename == stored
    content = client.files.content(created.id)
    assert content.read() == b"data"
    assert _disposition_name(content.response.headers["content-disposition"]) == stored
    _assert_served_as(raw, created.id, stored)


def test_quotes_in_a_filename_inject_no_header_parameter(
    client: openai.OpenAI, raw: httpx.Client
) -> None:
    # httpx sends `"` as %22 (as browsers do), so the raw test below sends the quote itself.
    created = client.files.create(
        file=("a\".txt\"; filename*=UTF-8''evil.exe", b"x"), purpose="assistants"
    )
    assert created.filename == "a%22.txt%22; filename*=UTF-8''evil.exe"
    header = client.files.content(created.id).response.headers["content-disposition"]
    assert _disposition_name(header) == created.filename
    _assert_served_as(raw, created.id, created.filename)


def _multipart(disposition: bytes) -> tuple[bytes, str]:
    boundary = "hal9100boundary"
    body = (
        f"--{boundary}\r\n".encode()
        + b'Content-Disposition: form-data; name="purpose"\r\n\r\nassistants\r\n'
        + f"--{boundary}\r\n".encode()
        + b'Content-Disposition: form-data; name="file"; '
        + disposition
        + b"\r\nContent-Type: text/plain\r\n\r\nhostile\r\n"
        + f"--{boundary}--\r\n".encode()
    )
    return body, f"multipart/form-data; boundary={boundary}"


@pytest.mark.parametrize(
    ("disposition", "stored"),
    [
        ('filename="报告.txt"'.encode(), "报告.txt"),  # raw UTF-8, as browsers send it
        (b'filename="%E6%8A%A5%E5%91%8A.txt"', "%E6%8A%A5%E5%91%8A.txt"),  # kept as sent
        (b'filename="..%2F..%2Fetc%2Fpasswd"', "..%2F..%2Fetc%2Fpasswd"),
        (
            b'filename="a\\".txt\\"; filename*=UTF-8\'\'evil.exe"',
            "a\".txt\"; filename*=UTF-8''evil.exe",
        ),
        (b"filename=\"a.txt\"; filename*=UTF-8''evil.exe", "a.txt"),  # RFC 7578: ignored
        (b'filename="nul\x00byte.txt"', "nulbyte.txt"),
        (b'filename="tab\tand\x1besc.txt"', "tabandesc.txt"),
        (b'filename="del\x7f c1\xc2\x85\xc2\x9f.txt"', "del c1.txt"),
        (b'filename="..\\..\\windows\\win.ini"', "win.ini"),
        (b'filename="/etc/passwd"', "passwd"),
        (b'filename="\xff\xfe.txt"', "\xff\xfe.txt"),  # not UTF-8: read as Latin-1
        (b'filename=""', "upload"),
        (b'filename="' + b"z" * 1000 + b'.tar.gz"', "z" * 252 + ".gz"),
    ],
)
def test_hostile_multipart_filenames(raw: httpx.Client, disposition: bytes, stored: str) -> None:
    body, content_type = _multipart(disposition)
    created = raw.post("/v1/files", content=body, headers={"Content-Type": content_type})
    assert created.status_code == 200, created.text
    assert created.json()["filename"] == stored
    _assert_served_as(raw, created.json()["id"], stored)
    assert raw.get("/v1/files", params={"limit": 5}).status_code == 200


@pytest.mark.parametrize(
    "disposition",
    [b'filename="line\r\nX-Injected: 1.txt"', b'filename="line\nbreak.txt"', b'filename="cr\rx"'],
)
def test_line_breaks_in_a_multipart_filename_never_break_the_server(
    raw: httpx.Client, disposition: bytes
) -> None:
    # A line break ends the part's header line, so what is left of the name depends on the
    # multipart parser; whatever it makes of it is refused or stored cleanly, never a 5xx.
    body, content_type = _multipart(disposition)
    created = raw.post("/v1/files", content=body, headers={"Content-Type": content_type})
    assert created.status_code < 500, created.text
    if created.status_code == 200:
        filename = created.json()["filename"]
        assert not any(ch in filename for ch in "\r\n\x00")
        _assert_served_as(raw, created.json()["id"], filename)


def _upload(
    raw: httpx.Client,
    fields: dict[str, bytes],
    part_type: bytes | None = b"text/plain",
    charset: str | None = None,
) -> httpx.Response:
    """A multipart upload built byte by byte: httpx would percent-encode control characters."""
    boundary = "hal9100boundary"
    body = b""
    for name, value in fields.items():
        body += f"--{boundary}\r\n".encode()
        body += f'Content-Disposition: form-data; name="{name}"\r\n\r\n'.encode()
        body += value + b"\r\n"
    body += f"--{boundary}\r\n".encode()
    body += b'Content-Disposition: form-data; name="file"; filename="a.txt"\r\n'
    if part_type is not None:
        body += b"Content-Type: " + part_type + b"\r\n"
    body += b"\r\nhostile\r\n" + f"--{boundary}--\r\n".encode()
    content_type = f"multipart/form-data; boundary={boundary}"
    if charset is not None:
        content_type += f"; charset={charset}"
    return raw.post("/v1/files", content=body, headers={"Content-Type": content_type})


@pytest.mark.parametrize(
    ("sent", "served"),
    [
        (b"image/png", "image/png"),
        (b"application/vnd.api+json; charset=utf-8", "application/vnd.api+json; charset=utf-8"),
        (b'model/x; header=present; x="a \\"b\\" c"', 'model/x; header=present; x="a \\"b\\" c"'),
        (None, "application/octet-stream"),
        (b"", "application/octet-stream"),
        (b"text/plain\x00evil", "application/octet-stream"),
        (b"image/\x01png", "application/octet-stream"),
        (b"image/png\x7f", "application/octet-stream"),
        (b"image/png; a=\x1b", "application/octet-stream"),
        (b"image/p\xc3\xa9ng", "application/octet-stream"),
        (b"imagepng", "application/octet-stream"),
        (b"image/png/x", "application/octet-stream"),
        (b"image/png;", "application/octet-stream"),
        (b"image/" + b"p" * 300, "application/octet-stream"),
    ],
)
def test_a_parts_content_type_is_served_back_only_when_valid(
    raw: httpx.Client, sent: bytes | None, served: str
) -> None:
    created = _upload(raw, {"purpose": b"assistants"}, part_type=sent)
    assert created.status_code == 200, created.text
    content = raw.get(f"/v1/files/{created.json()['id']}/content")
    assert content.status_code == 200
    assert content.read() == b"hostile"
    assert content.headers["content-type"] == served
    assert raw.get("/v1/files").status_code == 200


@pytest.mark.parametrize(
    "seconds", ["²", "\uff13\uff16\uff10\uff10", "٣٦٠٠", "9" * 5000, "-3600", "3600.0", ""]
)
def test_expiry_seconds_are_ascii_digits(raw: httpx.Client, seconds: str) -> None:
    fields = {"purpose": b"assistants", "expires_after[anchor]": b"created_at"}
    created = _upload(raw, {**fields, "expires_after[seconds]": seconds.encode()})
    assert created.status_code == 400, created.text
    assert created.json()["error"]["param"] == "expires_after.seconds"
    padded = _upload(raw, {**fields, "expires_after[seconds]": b" 3600 "})
    assert padded.status_code == 200, padded.text


@pytest.mark.parametrize(
    ("field", "param"),
    [("purpose", "purpose"), ("expires_after[anchor]", "expires_after.anchor")],
)
@pytest.mark.parametrize(
    ("value", "charset"),
    [
        (b"assis\x00tants", None),
        (b"created_at\x00", None),
        ("assistants\ud800".encode("utf-7"), "utf-7"),
        ("created_at\udfff".encode("utf-7"), "utf-7"),
        (b"\xed\xa0\x80", None),  # an encoded surrogate, not UTF-8: read as Latin-1
    ],
)
def test_bad_text_in_form_fields_is_400(
    raw: httpx.Client, field: str, param: str, value: bytes, charset: str | None
) -> None:
    fields = {"purpose": b"assistants", "expires_after[seconds]": b"3600", field: value}
    if field != "expires_after[anchor]":
        fields["expires_after[anchor]"] = b"created_at"
    created = _upload(raw, fields, charset=charset)
    assert created.status_code == 400, created.text
    assert created.json() == {
        "error": {
            "message": created.json()["error"]["message"],
            "type": "invalid_request_error",
            "param": param,
            "code": None,
        }
    }
    assert raw.get("/v1/files").status_code == 200
