"""The ``s3://bucket/prefix`` store, through boto3, for AWS S3 and S3-compatible servers.

How an object gets its SHA-256
------------------------------
S3 takes user metadata only when an upload begins (``CreateMultipartUpload``), before
the recorder knows the hash of what it is about to stream. So
:meth:`S3Store.complete_upload` completes the upload and then copies the object onto
itself (``CopyObject`` with ``MetadataDirective=REPLACE``, conditional on the ETag the
completion returned, so a concurrent writer is never stamped with our hash), setting
``x-amz-meta-sha256`` to the hex digest. Above 5 GiB, the ``CopyObject`` limit, the
copy is a multipart copy (``UploadPartCopy`` ranges). The copy is server-side: no byte
travels twice.

Where the server supports checksums (``s3_checksums``, on by default), every part is
sent with its SHA-256 (``x-amz-checksum-sha256``, so the server rejects a corrupted
part), the upload is created with ``ChecksumAlgorithm=SHA256``, and the in-place copy
asks the server to compute a full-object SHA-256 checksum, which
:meth:`S3Store.complete_upload` then compares with ours. A multipart copy leaves no
full-object checksum; the metadata hash and the size are still verified.

Server-side encryption from the settings goes with every request that writes an object
(``PutObject``, ``CreateMultipartUpload``, ``CopyObject``); parts inherit it from their
upload.

Retries
-------
botocore is configured to try each request once, with short connect and read timeouts;
failures become :class:`~recorder.storage.errors.StorageUnavailableError` and the
caller (the spool) retries with its own capped backoff. boto3 is synchronous: every
call runs in this store's own thread pool, so a hanging server occupies those threads,
never the event loop or the default executor.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import logging
import math
from collections.abc import AsyncIterator, Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import boto3
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    HTTPClientError,
    IncompleteReadError,
)
from botocore.exceptions import (
    ConnectionError as BotoConnectionError,
)

from recorder.storage.base import (
    MAX_PARTS,
    SHA256_METADATA_KEY,
    MultipartUpload,
    ObjectEntry,
    ObjectInfo,
    ObjectStore,
    UploadedPart,
    hex_to_base64,
    validate_key,
    validate_metadata,
    validate_sha256_hex,
)
from recorder.storage.errors import (
    IntegrityError,
    ObjectNotFoundError,
    StorageError,
    StorageUnavailableError,
    UploadLostError,
)
from recorder.storage.settings import S3_MIN_PART_SIZE, StorageSettings

__all__ = ["COPY_OBJECT_LIMIT", "S3Store"]

log = logging.getLogger(__name__)
T = TypeVar("T")

GiB = 1024 * 1024 * 1024
#: The largest object ``CopyObject`` copies in one request.
COPY_OBJECT_LIMIT = 5 * GiB
_NOT_FOUND = {"NoSuchKey", "404", "NotFound"}
_UPLOAD_LOST = {"NoSuchUpload", "InvalidPart", "InvalidPartOrder"}
_TRANSIENT = {
    "NoSuchBucket",  # the bucket may be (re)created; the spool keeps the bytes meanwhile
    "SlowDown",
    "Throttling",
    "ThrottlingException",
    "RequestTimeout",
    "RequestTimeTooSkewed",
    "InternalError",
    "ServiceUnavailable",
    "OperationAborted",
}


class S3Store(ObjectStore):
    """Objects under ``s3://bucket/prefix``.

    ``max_workers`` bounds concurrent requests (threads and pooled connections).
    ``copy_limit`` and ``copy_part_size`` govern how the SHA-256 is stamped onto a
    completed object: a single ``CopyObject`` up to ``copy_limit``, above it a multipart
    copy in ranges of ``copy_part_size`` (raised as needed to stay within 10,000 parts).
    """

    min_part_size = S3_MIN_PART_SIZE

    def __init__(
        self,
        settings: StorageSettings,
        *,
        max_workers: int = 8,
        copy_limit: int = COPY_OBJECT_LIMIT,
        copy_part_size: int = 512 * 1024 * 1024,
    ) -> None:
        if settings.scheme != "s3":
            raise ValueError("S3Store needs an s3:// storage URL")
        if not 0 < copy_limit <= COPY_OBJECT_LIMIT:
            raise ValueError(f"copy limit must be within 1..{COPY_OBJECT_LIMIT}")
        if not S3_MIN_PART_SIZE <= copy_part_size <= COPY_OBJECT_LIMIT:
            raise ValueError("copy part size must be between 5 MiB and 5 GiB")
        self.bucket = settings.bucket
        self.prefix = settings.prefix
        self._checksums = settings.s3_checksums
        self._copy_limit = copy_limit
        self._copy_part_size = copy_part_size
        self._encryption: dict[str, str] = {}
        if settings.s3_sse:
            self._encryption["ServerSideEncryption"] = settings.s3_sse
            if settings.s3_sse_kms_key_id:
                self._encryption["SSEKMSKeyId"] = settings.s3_sse_kms_key_id
        config = Config(
            region_name=settings.s3_region,
            connect_timeout=settings.s3_connect_timeout,
            read_timeout=settings.s3_read_timeout,
            # One attempt per call: the caller's retry loop decides, so an outage never
            # hides inside botocore's sleeps.
            retries={"total_max_attempts": 1, "mode": "standard"},
            max_pool_connections=max_workers,
            s3={"addressing_style": settings.s3_addressing_style},
            # We send SHA-256 checksums ourselves where we want them; botocore's default
            # CRC32 trailers (aws-chunked bodies) trip some S3-compatible servers.
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
            signature_version="s3v4",
        )
        session = boto3.session.Session()
        self._client: Any = session.client(
            "s3",
            endpoint_url=settings.s3_endpoint_url,
            region_name=settings.s3_region,
            aws_access_key_id=settings.s3_access_key_id or None,
            aws_secret_access_key=settings.s3_secret_access_key or None,
            config=config,
        )
        self._executor = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="s3")

    def url(self, key: str) -> str:
        return f"s3://{self.bucket}/{self._full(key)}"

    async def close(self) -> None:
        # Threads stuck on a dead server end by their read timeout; do not wait for them.
        self._executor.shutdown(wait=False, cancel_futures=True)
        self._client.close()

    # Single objects -----------------------------------------------------------------

    async def put(
        self,
        key: str,
        data: bytes,
        content_type: str = "application/octet-stream",
        metadata: Mapping[str, str] | None = None,
    ) -> ObjectInfo:
        checked = validate_metadata(metadata or {})
        data = bytes(data)
        sha256 = await asyncio.to_thread(_sha256_hex, data)
        arguments: dict[str, Any] = {
            "Bucket": self.bucket,
            "Key": self._full(key),
            "Body": data,
            "ContentType": content_type,
            "Metadata": {**checked, SHA256_METADATA_KEY: sha256},
            **self._encryption,
        }
        if self._checksums:
            arguments["ChecksumSHA256"] = hex_to_base64(sha256)
        await self._call(key, self._client.put_object, **arguments)
        return ObjectInfo(key, len(data), sha256, content_type, checked)

    async def get(self, key: str) -> bytes:
        def fetch() -> bytes:
            response = self._client.get_object(Bucket=self.bucket, Key=self._full(key))
            body = response["Body"]
            try:
                return bytes(body.read())
            finally:
                body.close()

        return await self._call(key, fetch)

    async def stream(self, key: str, chunk_size: int = 1024 * 1024) -> AsyncIterator[bytes]:
        if chunk_size <= 0:
            raise ValueError("chunk size must be positive")
        response = await self._call(
            key, self._client.get_object, Bucket=self.bucket, Key=self._full(key)
        )
        body = response["Body"]
        try:
            while chunk := await self._call(key, body.read, chunk_size):
                yield bytes(chunk)
        finally:
            body.close()

    async def stream_range(
        self, key: str, start: int, end: int, chunk_size: int = 1024 * 1024
    ) -> AsyncIterator[bytes]:
        if start < 0 or end < start:
            raise ValueError("a range is 0 <= start <= end")
        # S3 serves the range itself: a seek late in a long recording reads only that part.
        response = await self._call(
            key,
            self._client.get_object,
            Bucket=self.bucket,
            Key=self._full(key),
            Range=f"bytes={start}-{end}",
        )
        body = response["Body"]
        try:
            while chunk := await self._call(key, body.read, chunk_size):
                yield bytes(chunk)
        finally:
            body.close()

    async def head(self, key: str) -> ObjectInfo:
        info, _ = await self._head(key)
        return info

    async def _head(self, key: str) -> tuple[ObjectInfo, dict[str, Any]]:
        arguments: dict[str, Any] = {"Bucket": self.bucket, "Key": self._full(key)}
        if self._checksums:
            arguments["ChecksumMode"] = "ENABLED"
        response: dict[str, Any] = await self._call(key, self._client.head_object, **arguments)
        metadata = {name.lower(): value for name, value in response.get("Metadata", {}).items()}
        sha256 = metadata.pop(SHA256_METADATA_KEY, None)
        info = ObjectInfo(
            key=key,
            size=int(response["ContentLength"]),
            sha256=sha256,
            content_type=str(response.get("ContentType", "application/octet-stream")),
            metadata=metadata,
        )
        return info, response

    async def list_objects(self, prefix: str = "") -> list[ObjectEntry]:
        base = f"{self.prefix}/" if self.prefix else ""

        def collect() -> list[ObjectEntry]:
            paginator = self._client.get_paginator("list_objects_v2")
            entries = []
            for page in paginator.paginate(Bucket=self.bucket, Prefix=base + prefix):
                for item in page.get("Contents", []):
                    entries.append(ObjectEntry(item["Key"][len(base) :], int(item["Size"])))
            return entries

        entries = await self._call(prefix or "/", collect)
        return sorted(entries, key=lambda entry: entry.key)

    async def delete(self, key: str) -> None:
        await self._call(key, self._client.delete_object, Bucket=self.bucket, Key=self._full(key))

    # Multipart uploads --------------------------------------------------------------

    async def begin_upload(
        self, key: str, content_type: str = "application/octet-stream"
    ) -> MultipartUpload:
        arguments: dict[str, Any] = {
            "Bucket": self.bucket,
            "Key": self._full(key),
            "ContentType": content_type,
            **self._encryption,
        }
        if self._checksums:
            arguments["ChecksumAlgorithm"] = "SHA256"
        response = await self._call(key, self._client.create_multipart_upload, **arguments)
        return MultipartUpload(key=key, upload_id=response["UploadId"], content_type=content_type)

    async def upload_part(self, upload: MultipartUpload, number: int, data: bytes) -> UploadedPart:
        if not 1 <= number <= MAX_PARTS:
            raise ValueError(f"part number {number} is outside 1..{MAX_PARTS}")
        data = bytes(data)
        sha256 = hex_to_base64(await asyncio.to_thread(_sha256_hex, data))
        arguments: dict[str, Any] = {
            "Bucket": self.bucket,
            "Key": self._full(upload.key),
            "UploadId": upload.upload_id,
            "PartNumber": number,
            "Body": data,
        }
        if self._checksums:
            arguments["ChecksumSHA256"] = sha256
        response = await self._call_upload(upload, self._client.upload_part, **arguments)
        return UploadedPart(number, len(data), etag=response["ETag"], sha256=sha256)

    async def _call_upload(
        self, upload: MultipartUpload, function: Callable[..., T], **kwargs: Any
    ) -> T:
        """:meth:`_call` for a request on ``upload``, telling a lost upload from an outage."""
        try:
            return await self._call(upload.key, function, **kwargs)
        except StorageUnavailableError as error:
            if isinstance(error.__cause__, ClientError):
                # The server answered with a 5xx. Some S3-compatible servers (moto among
                # them) answer an unknown upload id that way instead of NoSuchUpload;
                # retrying would then go on for ever, so ask whether the upload exists.
                await self._raise_if_upload_lost(upload)
            raise

    async def _raise_if_upload_lost(self, upload: MultipartUpload) -> None:
        """Raise ``UploadLostError`` if the server no longer knows ``upload``."""
        try:
            await self._call(
                upload.key,
                self._client.list_parts,
                Bucket=self.bucket,
                Key=self._full(upload.key),
                UploadId=upload.upload_id,
                MaxParts=1,
            )
        except UploadLostError:
            raise
        except StorageError:
            return  # cannot tell; the caller's own error stands

    async def list_parts(self, upload: MultipartUpload) -> list[UploadedPart]:
        def collect() -> list[UploadedPart]:
            paginator = self._client.get_paginator("list_parts")
            parts = []
            pages = paginator.paginate(
                Bucket=self.bucket, Key=self._full(upload.key), UploadId=upload.upload_id
            )
            for page in pages:
                for item in page.get("Parts", []):
                    parts.append(
                        UploadedPart(
                            int(item["PartNumber"]),
                            int(item["Size"]),
                            str(item["ETag"]),
                            str(item.get("ChecksumSHA256", "")),
                        )
                    )
            return parts

        parts = await self._call(upload.key, collect)
        return sorted(parts, key=lambda part: part.number)

    async def complete_upload(
        self, upload: MultipartUpload, *, sha256: str, size: int
    ) -> ObjectInfo:
        validate_sha256_hex(sha256)
        if not upload.parts:
            raise ValueError("a multipart upload needs at least one part")
        if [part.number for part in upload.parts] != list(range(1, len(upload.parts) + 1)):
            raise ValueError("parts must be numbered 1..n without gaps")
        if upload.size != size:
            raise IntegrityError(
                f"the parts of the upload to {upload.key} add up to {upload.size} bytes, not {size}"
            )
        parts = []
        for part in upload.parts:
            entry = {"PartNumber": part.number, "ETag": part.etag}
            if self._checksums:
                entry["ChecksumSHA256"] = part.sha256
            parts.append(entry)
        response = await self._call_upload(
            upload,
            self._client.complete_multipart_upload,
            Bucket=self.bucket,
            Key=self._full(upload.key),
            UploadId=upload.upload_id,
            MultipartUpload={"Parts": parts},
        )
        await self._stamp_sha256(upload.key, response["ETag"], sha256, size, upload.content_type)
        return await self._verify(upload.key, sha256, size)

    async def abort_upload(self, upload: MultipartUpload) -> None:
        with contextlib.suppress(UploadLostError):
            await self._call(
                upload.key,
                self._client.abort_multipart_upload,
                Bucket=self.bucket,
                Key=self._full(upload.key),
                UploadId=upload.upload_id,
            )

    # Internals ----------------------------------------------------------------------

    async def _stamp_sha256(
        self, key: str, etag: str, sha256: str, size: int, content_type: str
    ) -> None:
        """Copy the just-completed object onto itself with ``sha256`` in its metadata."""
        full_key = self._full(key)
        source = {"Bucket": self.bucket, "Key": full_key}
        common: dict[str, Any] = {
            "Bucket": self.bucket,
            "Key": full_key,
            "ContentType": content_type,
            "Metadata": {SHA256_METADATA_KEY: sha256},
            **self._encryption,
        }
        if size <= self._copy_limit:
            arguments = {
                **common,
                "CopySource": source,
                "CopySourceIfMatch": etag,
                "MetadataDirective": "REPLACE",
            }
            if self._checksums:
                arguments["ChecksumAlgorithm"] = "SHA256"
            await self._call(key, self._client.copy_object, **arguments)
            return
        created = await self._call(key, self._client.create_multipart_upload, **common)
        upload_id = created["UploadId"]
        part_size = max(self._copy_part_size, math.ceil(size / MAX_PARTS))
        try:
            parts = []
            for number, start in enumerate(range(0, size, part_size), start=1):
                end = min(start + part_size, size) - 1
                copied = await self._call(
                    key,
                    self._client.upload_part_copy,
                    Bucket=self.bucket,
                    Key=full_key,
                    UploadId=upload_id,
                    PartNumber=number,
                    CopySource=source,
                    CopySourceIfMatch=etag,
                    CopySourceRange=f"bytes={start}-{end}",
                )
                parts.append({"PartNumber": number, "ETag": copied["CopyPartResult"]["ETag"]})
            await self._call(
                key,
                self._client.complete_multipart_upload,
                Bucket=self.bucket,
                Key=full_key,
                UploadId=upload_id,
                MultipartUpload={"Parts": parts},
            )
        except BaseException:
            # An unfinished copy must not linger (the lifecycle rule would get it later).
            try:
                await self._call(
                    key,
                    self._client.abort_multipart_upload,
                    Bucket=self.bucket,
                    Key=full_key,
                    UploadId=upload_id,
                )
            except StorageError:
                log.warning("S3 store: could not abort the metadata copy of %s", key)
            raise

    async def _verify(self, key: str, sha256: str, size: int) -> ObjectInfo:
        info, response = await self._head(key)
        if info.size != size:
            raise IntegrityError(f"{key} holds {info.size} bytes after upload, not {size}")
        if info.sha256 != sha256:
            raise IntegrityError(f"{key} does not carry the SHA-256 it was written with")
        checksum = response.get("ChecksumSHA256")
        full_object = response.get("ChecksumType", "FULL_OBJECT") == "FULL_OBJECT"
        # A composite checksum ("…-N", a hash of part hashes) cannot be compared with ours.
        comparable = checksum and full_object and "-" not in checksum
        if comparable and checksum != hex_to_base64(sha256):
            raise IntegrityError(f"the server's SHA-256 checksum of {key} differs from ours")
        return info

    def _full(self, key: str) -> str:
        validate_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    async def _call(self, key: str, function: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(
                self._executor, functools.partial(function, *args, **kwargs)
            )
        except ClientError as error:
            raise _translate_client_error(error, key, self.bucket) from error
        except (BotoConnectionError, HTTPClientError, IncompleteReadError) as error:
            raise StorageUnavailableError(f"S3 is unreachable ({type(error).__name__})") from error
        except BotoCoreError as error:
            raise StorageError(f"S3 client error: {error}") from error


def _translate_client_error(error: ClientError, key: str, bucket: str) -> StorageError:
    details = error.response.get("Error", {})
    code = str(details.get("Code", ""))
    status = int(error.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
    operation = error.operation_name
    if code in _UPLOAD_LOST:
        return UploadLostError(f"S3 {operation} on {key}: {code}")
    if code == "NoSuchBucket":
        return StorageUnavailableError(f"S3 bucket {bucket} does not exist ({operation})")
    if code in _NOT_FOUND:
        return ObjectNotFoundError(f"no object {key}")
    if code in _TRANSIENT or status >= 500 or status == 429:
        return StorageUnavailableError(f"S3 {operation} on {key}: {code or status}")
    return StorageError(f"S3 {operation} on {key} failed: {code or status}")


def _sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
