"""File contents in S3-compatible object storage (AWS S3, MinIO, ...): the production store.

Uploads go up as a multipart upload in parts of PART_SIZE, downloads come down in chunks, so
no file is ever held whole in memory.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import aioboto3
from botocore.config import Config
from botocore.exceptions import ClientError

from hal9100.storage.base import CHUNK_SIZE

# S3 wants every part but the last to be at least 5 MiB.
PART_SIZE = 8 * 1024 * 1024
# A download holds one connection for as long as its client takes to read it, so this bounds
# the downloads one process serves at once; botocore's default of 10 let ten slow clients
# hold up every other download and upload.
MAX_CONNECTIONS = 128


class S3Storage:
    def __init__(
        self,
        *,
        endpoint: str,
        access_key: str | None,
        secret_key: str | None,
        bucket: str,
        region: str = "us-east-1",
    ) -> None:
        self.bucket = bucket
        self._session = aioboto3.Session(
            aws_access_key_id=access_key,
            aws_secret_access_key=secret_key,
            region_name=region,
        )
        self._endpoint = endpoint
        self._stack = contextlib.AsyncExitStack()
        self._client: Any = None

    async def _s3(self) -> Any:
        if self._client is None:
            self._client = await self._stack.enter_async_context(
                self._session.client(
                    "s3",
                    endpoint_url=self._endpoint,
                    # MinIO and most self-hosted stores want path-style addressing.
                    config=Config(
                        s3={"addressing_style": "path"},
                        retries={"max_attempts": 3},
                        max_pool_connections=MAX_CONNECTIONS,
                    ),
                )
            )
            await self._ensure_bucket(self._client)
        return self._client

    async def _ensure_bucket(self, client: Any) -> None:
        try:
            await client.head_bucket(Bucket=self.bucket)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") not in ("404", "NoSuchBucket", "NotFound"):
                raise
            with contextlib.suppress(client.exceptions.BucketAlreadyOwnedByYou):
                await client.create_bucket(Bucket=self.bucket)

    async def ping(self) -> None:
        client = await self._s3()
        await client.head_bucket(Bucket=self.bucket)

    async def put(self, key: str, chunks: AsyncIterator[bytes]) -> int:
        client = await self._s3()
        buffer = bytearray()
        size = 0
        upload_id: str | None = None
        parts: list[dict[str, Any]] = []
        try:
            async for chunk in chunks:
                size += len(chunk)
                buffer.extend(chunk)
                while len(buffer) >= PART_SIZE:
                    if upload_id is None:
                        created = await client.create_multipart_upload(Bucket=self.bucket, Key=key)
                        upload_id = created["UploadId"]
                    part = bytes(buffer[:PART_SIZE])
                    del buffer[:PART_SIZE]
                    answer = await client.upload_part(
                        Bucket=self.bucket,
                        Key=key,
                        UploadId=upload_id,
                        PartNumber=len(parts) + 1,
                        Body=part,
                    )
                    parts.append({"ETag": answer["ETag"], "PartNumber": len(parts) + 1})
            if upload_id is None:
                await client.put_object(Bucket=self.bucket, Key=key, Body=bytes(buffer))
                return size
            if buffer:
                answer = await client.upload_part(
                    Bucket=self.bucket,
                    Key=key,
                    UploadId=upload_id,
                    PartNumber=len(parts) + 1,
                    Body=bytes(buffer),
                )
                parts.append({"ETag": answer["ETag"], "PartNumber": len(parts) + 1})
            await client.complete_multipart_upload(
                Bucket=self.bucket, Key=key, UploadId=upload_id, MultipartUpload={"Parts": parts}
            )
            return size
        except BaseException:
            if upload_id is not None:
                with contextlib.suppress(Exception):
                    await client.abort_multipart_upload(
                        Bucket=self.bucket, Key=key, UploadId=upload_id
                    )
            raise

    async def get(self, key: str) -> AsyncIterator[bytes]:
        client = await self._s3()
        try:
            answer = await client.get_object(Bucket=self.bucket, Key=key)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                raise KeyError(key) from exc
            raise
        body = answer["Body"]
        try:
            while chunk := await body.read(CHUNK_SIZE):
                yield chunk
        finally:
            body.close()

    async def delete(self, key: str) -> None:
        client = await self._s3()
        await client.delete_object(Bucket=self.bucket, Key=key)

    async def aclose(self) -> None:
        await self._stack.aclose()
        self._client = None
