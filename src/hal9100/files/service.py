"""Files: uploaded bytes in object storage, described by a row in the database."""

from __future__ import annotations

import re
import unicodedata
from collections.abc import AsyncIterator
from urllib.parse import quote

from fastapi import UploadFile
from sqlalchemy.ext.asyncio import AsyncSession

from hal9100.core import ids
from hal9100.core.clock import now
from hal9100.core.errors import APIError, bad_request
from hal9100.core.guards import check_text, upload_too_large
from hal9100.core.pagination import ListParams, envelope
from hal9100.core.schemas import ListResponse
from hal9100.db.models import File
from hal9100.files.repository import FileRepository
from hal9100.files.schemas import PURPOSES, FileDeleted, FileObject
from hal9100.storage.base import CHUNK_SIZE, ObjectStorage


def to_object(row: File) -> FileObject:
    return FileObject(
        id=row.id,
        bytes=row.bytes,
        created_at=row.created_at,
        expires_at=row.expires_at,
        filename=row.filename,
        purpose=row.purpose,
        status=row.status,
        status_details=row.status_details,
    )


# The name stored when an upload's own cleans down to nothing.
DEFAULT_FILENAME = "upload"
# What most file systems allow for one name, counted in UTF-8 bytes, so a downloaded file can
# be saved under the name it was stored with.
MAX_FILENAME_BYTES = 255
# A longer suffix is not an extension worth keeping when a name is cut.
_MAX_EXTENSION_CHARS = 16


def clean_filename(name: str | None) -> str:
    """The name an upload is stored and answered under: its last path component (clients
    send whole paths, with either separator), without control characters (C0, DEL, C1) or
    lone surrogates, cut to MAX_FILENAME_BYTES with its extension kept; DEFAULT_FILENAME
    when nothing is left."""
    kept = "".join(ch for ch in name or "" if unicodedata.category(ch) not in ("Cc", "Cs"))
    base = re.split(r"[/\\]", kept)[-1].strip()
    if base in ("", ".", ".."):
        return DEFAULT_FILENAME
    if len(base.encode()) <= MAX_FILENAME_BYTES:
        return base
    stem, dot, extension = base.rpartition(".")
    if not stem.strip() or len(extension) > _MAX_EXTENSION_CHARS:
        stem, dot, extension = base, "", ""
    budget = MAX_FILENAME_BYTES - len(f"{dot}{extension}".encode())
    # Cut on a byte count, dropping a character split in two by the cut.
    return stem.encode()[:budget].decode(errors="ignore") + dot + extension


def content_disposition(filename: str) -> str:
    """An `attachment` header naming the file both ways RFC 6266 allows: `filename*` (RFC
    5987: UTF-8, percent-encoded) for clients that read it, and a plain ASCII `filename` for
    those that do not, with nothing in it that a client could unescape, decode or split on."""
    # Rows stored before upload names were cleaned are cleaned here, so no name can break
    # the header.
    name = clean_filename(filename)
    fallback = "".join(
        ch if " " <= ch <= "~" and ch not in '"\\%;' else "_"
        for ch in unicodedata.normalize("NFKD", name)
        if not unicodedata.combining(ch)
    )
    return f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{quote(name, safe='')}"


DEFAULT_MEDIA_TYPE = "application/octet-stream"
MAX_MEDIA_TYPE_CHARS = 255
# RFC 7231 3.1.1.1: `type/subtype` tokens, then `; name=value` parameters (a token or a quoted
# string), printable ASCII only: what a response header can carry back unchanged.
_TOKEN = r"[!#$%&'*+.^_`|~0-9A-Za-z-]+"
_QUOTED = r'"(?:[\t !#-\[\]-~]|\\[\t -~])*"'
_MEDIA_TYPE = re.compile(
    rf"{_TOKEN}/{_TOKEN}(?:[ \t]*;[ \t]*{_TOKEN}=(?:{_TOKEN}|{_QUOTED}))*", re.ASCII
)


def media_type(sent: str | None) -> str:
    """The Content-Type a file is stored and served with: the upload part's own when it is a
    valid media type, DEFAULT_MEDIA_TYPE otherwise. A control character in it would break
    the download's header (and PostgreSQL refuses NUL); rows stored before uploads were
    checked are checked again when served."""
    sent = (sent or "").strip()
    if len(sent) <= MAX_MEDIA_TYPE_CHARS and _MEDIA_TYPE.fullmatch(sent):
        return sent
    return DEFAULT_MEDIA_TYPE


EXPIRES_MIN_SECONDS = 3600
EXPIRES_MAX_SECONDS = 2_592_000


def expires_after_seconds(anchor: str | None, seconds: str | None) -> int | None:
    """Validate the multipart `expires_after[anchor]` / `expires_after[seconds]` pair."""
    check_text(anchor, "expires_after.anchor")
    check_text(seconds, "expires_after.seconds")
    if anchor is None and seconds is None:
        return None
    if anchor != "created_at":
        raise bad_request(
            f"Invalid value for 'expires_after.anchor': {anchor!r}. Expected 'created_at'.",
            "expires_after.anchor",
        )
    if seconds is None:
        raise bad_request(
            "Missing required parameter: 'expires_after.seconds'.", "expires_after.seconds"
        )
    digits = seconds.strip()
    # ASCII only: `int` takes other scripts' digits (and refuses "²", which isdigit() passes);
    # ten digits are past any bound without making `int` parse thousands.
    value = int(digits) if digits.isascii() and digits.isdigit() and len(digits) <= 10 else -1
    if not EXPIRES_MIN_SECONDS <= value <= EXPIRES_MAX_SECONDS:
        raise bad_request(
            f"Invalid value for 'expires_after.seconds': {seconds!r}. Expected an integer "
            f"between {EXPIRES_MIN_SECONDS} and {EXPIRES_MAX_SECONDS}.",
            "expires_after.seconds",
        )
    return value


async def _chunks(upload: UploadFile, limit: int) -> AsyncIterator[bytes]:
    # UploadFile has already spooled the body to a temporary file past 1 MB; read it back in
    # chunks so no upload is ever whole in memory.
    total = 0
    while chunk := await upload.read(CHUNK_SIZE):
        total += len(chunk)
        if total > limit:
            # The request-size guard lets the multipart framing through: the file part
            # itself is counted here.
            raise upload_too_large(limit, "file")
        yield chunk


async def create(
    session: AsyncSession,
    storage: ObjectStorage,
    upload: UploadFile,
    purpose: str,
    *,
    max_bytes: int,
    expires_after_seconds: int | None = None,
) -> FileObject:
    check_text(purpose, "purpose")
    if purpose not in PURPOSES:
        raise bad_request(
            f"Invalid value for 'purpose': '{purpose}'. Expected one of {', '.join(PURPOSES)}.",
            "purpose",
        )
    file_id = ids.file_id()
    key = f"files/{file_id}"
    size = await storage.put(key, _chunks(upload, max_bytes))
    created = now()
    row = File(
        id=file_id,
        created_at=created,
        filename=clean_filename(upload.filename),
        purpose=purpose,
        bytes=size,
        status="processed",
        expires_at=created + expires_after_seconds if expires_after_seconds else None,
        storage_key=key,
        content_type=media_type(upload.content_type),
    )
    FileRepository(session).add(row)
    try:
        await session.commit()
    except BaseException:
        await storage.delete(key)
        raise
    return to_object(row)


async def retrieve(session: AsyncSession, file_id: str) -> FileObject:
    return to_object(await FileRepository(session).get_or_404(file_id))


async def list_(
    session: AsyncSession, params: ListParams, purpose: str | None
) -> ListResponse[FileObject]:
    rows, has_more = await FileRepository(session).page_by_purpose(params, purpose)
    return envelope([to_object(r) for r in rows], has_more)


async def delete(session: AsyncSession, storage: ObjectStorage, file_id: str) -> FileDeleted:
    repo = FileRepository(session)
    row = await repo.get_or_404(file_id)
    await repo.delete_by_id(file_id)
    await session.commit()
    # Bytes go after the row: a crash in between leaves an orphan object, never a row that
    # points at nothing.
    await storage.delete(row.storage_key)
    return FileDeleted(id=file_id)


async def open_content(
    session: AsyncSession, storage: ObjectStorage, file_id: str
) -> tuple[File, AsyncIterator[bytes]]:
    row = await FileRepository(session).get_or_404(file_id)
    # End the read transaction before storage is asked: no database connection waits on
    # object storage (which may itself wait for a free connection of its own).
    await session.commit()
    stream = storage.get(row.storage_key)
    # Pull the first chunk now so a missing object is a clean error, not a broken stream.
    iterator = aiter(stream)
    try:
        first = await anext(iterator)
    except StopAsyncIteration:
        first = b""
    except KeyError as exc:
        raise APIError(
            500, f"The contents of file '{file_id}' are missing from storage.", type="server_error"
        ) from exc

    async def body() -> AsyncIterator[bytes]:
        if first:
            yield first
        async for chunk in iterator:
            yield chunk

    return row, body()
