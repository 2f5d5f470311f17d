"""The S3-compatible backend (AWS S3, MinIO, Ceph RGW, R2...), through aiobotocore.

Objects smaller than one part (`S3_PART_BYTES`) go up in one `PutObject`; larger ones as a
multipart upload, one part in flight while the next is read, so memory stays at two parts per
upload whatever the object's size. A multipart upload that fails or is abandoned is aborted, so
no half object becomes visible and no parts linger (S3 shows an object only once the upload
is completed). Reads are ranged `GetObject` calls streamed chunk by chunk.

Credentials come from the settings when given (`S3_ACCESS_KEY_ID`, `S3_SECRET_ACCESS_KEY`),
else from botocore's usual chain (environment, instance or task role).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterable, AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

from aiobotocore.config import AioConfig
from aiobotocore.session import get_session
from botocore.exceptions import BotoCoreError, ClientError

from storage.filestore import CHUNK_BYTES, ObjectInfo, ObjectMissing, StoreError, check_key

if TYPE_CHECKING:
    from config import Settings

log = logging.getLogger("backend.files")

_MISSING = frozenset({"404", "NoSuchKey", "NotFound"})
FAILURES = (ClientError, BotoCoreError, OSError)


class S3Store:
    def __init__(self, client: Any, bucket: str, prefix: str, part_bytes: int) -> None:
        self._client = client
        self.bucket = bucket
        self.prefix = prefix
        self.part_bytes = part_bytes

    @classmethod
    @asynccontextmanager
    async def connect(cls, settings: Settings) -> AsyncIterator[S3Store]:
        """A client with its own connection pool; the bucket is checked before it is used."""
        assert settings.s3_bucket is not None  # the settings refuse s3 without a bucket
        config = AioConfig(
            region_name=settings.s3_region,
            s3={"addressing_style": settings.s3_addressing_style},
            max_pool_connections=settings.s3_pool_size,
            connect_timeout=5,
            read_timeout=60,
            retries={"max_attempts": 3, "mode": "standard"},
            # Checksums only where the API requires them: what S3-compatible servers support.
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
        )
        credentials = {}
        if settings.s3_access_key_id and settings.s3_secret_access_key:
            credentials = {
                "aws_access_key_id": settings.s3_access_key_id.get_secret_value(),
                "aws_secret_access_key": settings.s3_secret_access_key.get_secret_value(),
            }
        async with get_session().create_client(
            "s3", endpoint_url=settings.s3_endpoint_url, config=config, **credentials
        ) as client:
            try:
                await client.head_bucket(Bucket=settings.s3_bucket)
            except FAILURES as error:
                raise StoreError(
                    f"S3 bucket {settings.s3_bucket!r} is not usable: {_describe(error)}"
                ) from error
            yield cls(client, settings.s3_bucket, settings.s3_prefix, settings.s3_part_bytes)

    def _key(self, key: str) -> str:
        return self.prefix + check_key(key)

    async def put(self, key: str, chunks: AsyncIterable[bytes]) -> int:
        name = self._key(key)
        buffer = bytearray()
        size = 0
        upload: _Multipart | None = None
        try:
            async for chunk in chunks:
                buffer += chunk
                size += len(chunk)
                if len(buffer) >= self.part_bytes:
                    if upload is None:
                        upload = await _Multipart.create(self._client, self.bucket, name)
                    await upload.send(bytes(buffer))
                    buffer.clear()
            if upload is None:
                await self._client.put_object(Bucket=self.bucket, Key=name, Body=bytes(buffer))
            else:
                if buffer:
                    await upload.send(bytes(buffer))
                await upload.complete()
        except BaseException as error:
            if upload is not None:
                await upload.abort()
            if isinstance(error, FAILURES):
                raise StoreError(f"writing {key!r} failed: {_describe(error)}") from error
            raise
        return size

    @asynccontextmanager
    async def open(
        self, key: str, start: int = 0, stop: int | None = None
    ) -> AsyncIterator[_BodyReader]:
        name = self._key(key)
        if stop is not None and stop <= start:  # S3 has no empty range: only check existence
            if await self.stat(key) is None:
                raise ObjectMissing(key)
            yield _BodyReader(None, 0)
            return
        byte_range = f"bytes={start}-{'' if stop is None else stop - 1}"
        try:
            response = await self._client.get_object(Bucket=self.bucket, Key=name, Range=byte_range)
        except ClientError as error:
            if _code(error) in _MISSING:
                raise ObjectMissing(key) from None
            raise StoreError(f"reading {key!r} failed: {_describe(error)}") from error
        except FAILURES as error:
            raise StoreError(f"reading {key!r} failed: {_describe(error)}") from error
        body = response["Body"]
        try:
            yield _BodyReader(body, response["ContentLength"])
        finally:
            body.close()

    async def stat(self, key: str) -> ObjectInfo | None:
        try:
            head = await self._client.head_object(Bucket=self.bucket, Key=self._key(key))
        except ClientError as error:
            if _code(error) in _MISSING:
                return None
            raise StoreError(f"stat of {key!r} failed: {_describe(error)}") from error
        except FAILURES as error:
            raise StoreError(f"stat of {key!r} failed: {_describe(error)}") from error
        return ObjectInfo(key, head["ContentLength"])

    async def delete(self, key: str) -> None:
        try:
            await self._client.delete_object(Bucket=self.bucket, Key=self._key(key))
        except FAILURES as error:
            raise StoreError(f"deleting {key!r} failed: {_describe(error)}") from error


class _Multipart:
    """One multipart upload: parts are sent one at a time, each while the next is read."""

    def __init__(self, client: Any, bucket: str, key: str, upload_id: str) -> None:
        self._client = client
        self._where = {"Bucket": bucket, "Key": key, "UploadId": upload_id}
        self._parts: list[dict[str, Any]] = []
        self._sending: asyncio.Task[None] | None = None

    @classmethod
    async def create(cls, client: Any, bucket: str, key: str) -> _Multipart:
        started = await client.create_multipart_upload(Bucket=bucket, Key=key)
        return cls(client, bucket, key, started["UploadId"])

    async def send(self, data: bytes) -> None:
        await self._wait()
        number = len(self._parts) + 1
        self._parts.append({"PartNumber": number})
        self._sending = asyncio.create_task(self._send(number, data))

    async def _send(self, number: int, data: bytes) -> None:
        sent = await self._client.upload_part(PartNumber=number, Body=data, **self._where)
        self._parts[number - 1]["ETag"] = sent["ETag"]

    async def _wait(self) -> None:
        if self._sending is not None:
            sending, self._sending = self._sending, None
            await sending

    async def complete(self) -> None:
        await self._wait()
        await self._client.complete_multipart_upload(
            MultipartUpload={"Parts": self._parts}, **self._where
        )

    async def abort(self) -> None:
        """Drop the parts sent so far. Runs even while the caller is being cancelled."""
        if self._sending is not None:
            self._sending.cancel()
            await asyncio.gather(self._sending, return_exceptions=True)
        try:
            await asyncio.shield(self._client.abort_multipart_upload(**self._where))
        except (*FAILURES, asyncio.CancelledError) as error:
            # The bucket's lifecycle rule for incomplete uploads is the backstop (see README).
            log.warning("aborting a multipart upload failed: %s", _describe(error))


class _BodyReader:
    def __init__(self, body: Any, length: int) -> None:
        self._body = body
        self.length = length

    async def __aiter__(self) -> AsyncIterator[bytes]:
        if self._body is None:
            return
        try:
            while chunk := await self._body.read(CHUNK_BYTES):
                yield chunk
        except FAILURES as error:
            raise StoreError(f"reading failed: {_describe(error)}") from error


def _code(error: ClientError) -> str:
    return str(error.response.get("Error", {}).get("Code", ""))


def _describe(error: BaseException) -> str:
    if isinstance(error, ClientError):
        return f"{_code(error)} {error.response.get('Error', {}).get('Message', '')}".strip()
    return str(error) or type(error).__name__
