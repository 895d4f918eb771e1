"""Both storage backends through one interface; S3 against moto's server over HTTP."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import random
from pathlib import Path
from typing import Any

import pytest

from recorder.storage import (
    FileSystemStore,
    IntegrityError,
    MultipartUpload,
    ObjectNotFoundError,
    ObjectStore,
    S3Store,
    StorageConfigError,
    StorageSettings,
    StorageUnavailableError,
    UploadLostError,
    open_store,
)
from tests.recorder.conftest import MiB, file_settings, s3_settings
from tests.s3server import S3Server, free_port


def payload(size: int, seed: int = 1) -> bytes:
    return random.Random(seed).randbytes(size)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# Both backends ---------------------------------------------------------------------


async def test_put_head_get_round_trip(store: ObjectStore) -> None:
    data = b'{"version": 1}'
    info = await store.put(
        "consultations/c1/protocol.json", data, "application/json", {"schema": "1"}
    )
    assert (info.size, info.sha256) == (len(data), sha(data))

    head = await store.head("consultations/c1/protocol.json")
    assert head.size == len(data)
    assert head.sha256 == sha(data)
    assert head.content_type == "application/json"
    assert dict(head.metadata) == {"schema": "1"}
    assert await store.get("consultations/c1/protocol.json") == data

    replaced = b'{"version": 2}'
    await store.put("consultations/c1/protocol.json", replaced, "application/json")
    assert await store.get("consultations/c1/protocol.json") == replaced
    assert (await store.head("consultations/c1/protocol.json")).sha256 == sha(replaced)


async def test_stream_yields_the_object_in_bounded_chunks(store: ObjectStore) -> None:
    data = payload(300_000)
    await store.put("a/blob.bin", data)
    chunks = [chunk async for chunk in store.stream("a/blob.bin", chunk_size=64 * 1024)]
    assert b"".join(chunks) == data
    assert max(len(chunk) for chunk in chunks) <= 64 * 1024
    assert len(chunks) >= 5


@pytest.mark.parametrize(
    ("start", "end"), [(0, 0), (65_530, 65_540), (1, 299_999), (299_999, 299_999)]
)
async def test_a_range_reads_exactly_those_bytes(store: ObjectStore, start: int, end: int) -> None:
    data = payload(300_000)
    await store.put("a/blob.bin", data)
    chunks = [c async for c in store.stream_range("a/blob.bin", start, end, chunk_size=64 * 1024)]
    assert b"".join(chunks) == data[start : end + 1]
    assert max(len(chunk) for chunk in chunks) <= 64 * 1024


async def test_missing_objects_raise_not_found(store: ObjectStore) -> None:
    with pytest.raises(ObjectNotFoundError):
        await store.head("no/such.webm")
    with pytest.raises(ObjectNotFoundError):
        await store.get("no/such.webm")
    with pytest.raises(ObjectNotFoundError):
        async for _ in store.stream("no/such.webm"):
            pass
    await store.delete("no/such.webm")  # deleting nothing is fine


async def test_list_by_prefix_and_delete(store: ObjectStore) -> None:
    for key in ("c1/a.webm", "c1/b.webm", "c10/a.webm", "c2/a.webm", "top.json"):
        await store.put(key, key.encode())
    unfinished = await store.begin_upload("c1/unfinished.webm")
    await store.upload_part(unfinished, 1, b"x" * 1000)

    assert [e.key for e in await store.list_objects("c1/")] == ["c1/a.webm", "c1/b.webm"]
    assert [e.key for e in await store.list_objects("c1")] == [
        "c1/a.webm",
        "c1/b.webm",
        "c10/a.webm",
    ]
    everything = await store.list_objects()
    assert [e.key for e in everything] == [
        "c1/a.webm",
        "c1/b.webm",
        "c10/a.webm",
        "c2/a.webm",
        "top.json",
    ]
    assert {e.key: e.size for e in everything}["top.json"] == len(b"top.json")
    assert await store.list_objects("nothing/") == []

    await store.delete("c1/a.webm")
    assert [e.key for e in await store.list_objects("c1/")] == ["c1/b.webm"]
    with pytest.raises(ObjectNotFoundError):
        await store.head("c1/a.webm")
    await store.abort_upload(unfinished)


async def test_multipart_upload_carries_and_verifies_sha256(store: ObjectStore) -> None:
    data = payload(5 * MiB + 123_457)
    upload = await store.begin_upload("c1/participant/segment-1.webm", "video/webm")
    first = await store.upload_part(upload, 1, data[: 5 * MiB])
    upload = upload.with_part(first)
    # Nothing is visible before completion.
    with pytest.raises(ObjectNotFoundError):
        await store.head("c1/participant/segment-1.webm")
    assert await store.list_objects("c1/") == []

    upload = upload.with_part(await store.upload_part(upload, 2, data[5 * MiB :]))
    listed = await store.list_parts(upload)
    assert [(p.number, p.size, p.etag) for p in listed] == [
        (p.number, p.size, p.etag) for p in upload.parts
    ]

    info = await store.complete_upload(upload, sha256=sha(data), size=len(data))
    assert (info.size, info.sha256) == (len(data), sha(data))
    head = await store.head("c1/participant/segment-1.webm")
    assert (head.size, head.sha256, head.content_type) == (len(data), sha(data), "video/webm")
    assert await store.get("c1/participant/segment-1.webm") == data


async def test_completing_with_a_wrong_hash_is_an_integrity_error(store: ObjectStore) -> None:
    data = payload(1000)
    upload = await store.begin_upload("c1/seg.webm")
    upload = upload.with_part(await store.upload_part(upload, 1, data))
    with pytest.raises(IntegrityError):
        await store.complete_upload(upload, sha256=sha(b"something else"), size=len(data))


async def test_upload_handle_resumes_in_another_store_instance(
    store: ObjectStore, storage_settings: StorageSettings
) -> None:
    data = payload(5 * MiB + 10)
    upload = await store.begin_upload("c1/resumed.webm", "video/webm")
    upload = upload.with_part(await store.upload_part(upload, 1, data[: 5 * MiB]))
    persisted = json.dumps(upload.to_dict())

    async with open_store(storage_settings) as other:
        resumed = MultipartUpload.from_dict(json.loads(persisted))
        assert resumed == upload
        resumed = resumed.with_part(await other.upload_part(resumed, 2, data[5 * MiB :]))
        info = await other.complete_upload(resumed, sha256=sha(data), size=len(data))
    assert info.sha256 == sha(data)
    assert await store.get("c1/resumed.webm") == data


async def test_aborted_upload_is_lost(store: ObjectStore) -> None:
    upload = await store.begin_upload("c1/aborted.webm")
    upload = upload.with_part(await store.upload_part(upload, 1, b"abc"))
    await store.abort_upload(upload)
    await store.abort_upload(upload)  # idempotent
    with pytest.raises(UploadLostError):
        await store.upload_part(upload, 2, b"def")
    with pytest.raises(UploadLostError):
        await store.list_parts(upload)
    with pytest.raises(UploadLostError):
        await store.complete_upload(upload, sha256=sha(b"abc"), size=3)
    with pytest.raises(ObjectNotFoundError):
        await store.head("c1/aborted.webm")


@pytest.mark.parametrize(
    "key", ["", "/abs", "a//b", "a/../b", "./a", "a/.hidden", "back\\slash", "nul\x00", "x" * 901]
)
async def test_invalid_keys_are_refused(store: ObjectStore, key: str) -> None:
    with pytest.raises(ValueError):
        await store.put(key, b"x")


async def test_metadata_names_are_checked(store: ObjectStore) -> None:
    with pytest.raises(ValueError, match="reserved"):
        await store.put("a.json", b"{}", metadata={"sha256": "0" * 64})
    with pytest.raises(ValueError):
        await store.put("a.json", b"{}", metadata={"Upper": "x"})


# Filesystem specifics ----------------------------------------------------------------


async def test_file_store_layout_hides_bookkeeping(tmp_path: Path) -> None:
    root = tmp_path / "storage"
    async with FileSystemStore(root) as store:
        await store.put("c1/a.webm", b"abc", "video/webm")
        upload = await store.begin_upload("c1/b.webm")
        await store.upload_part(upload, 1, b"partial")
        (root / ".telemed" / "tmp" / "left-over.tmp").write_bytes(b"crash leftovers")
        assert [e.key for e in await store.list_objects()] == ["c1/a.webm"]
        # The object is the plain file, byte for byte.
        assert (root / "c1" / "a.webm").read_bytes() == b"abc"
        assert store.url("c1/a.webm") == (root / "c1" / "a.webm").as_uri()


async def test_file_store_head_does_not_trust_metadata_of_another_version(
    tmp_path: Path,
) -> None:
    root = tmp_path / "storage"
    async with FileSystemStore(root) as store:
        await store.put("c1/a.webm", b"old bytes", "video/webm")
        # As if a crash hit between the metadata rename and the object rename of a later
        # write, or someone replaced the file: the metadata describes another inode.
        replacement = root / "c1" / "replacement"
        replacement.write_bytes(b"new bytes")
        os.replace(replacement, root / "c1" / "a.webm")
        head = await store.head("c1/a.webm")
        assert head.sha256 == sha(b"new bytes")
        assert head.size == len(b"new bytes")


# S3 specifics ------------------------------------------------------------------------


async def test_s3_objects_are_encrypted_and_checksummed(
    s3_server: S3Server, bucket: str, tmp_path: Path
) -> None:
    settings = s3_settings(s3_server, bucket, tmp_path, prefix="clinic/a", s3_sse="AES256")
    data = payload(5 * MiB + 77)
    async with S3Store(settings) as store:
        await store.put("c1/protocol.json", b"{}", "application/json")
        upload = await store.begin_upload("c1/seg.webm", "video/webm")
        upload = upload.with_part(await store.upload_part(upload, 1, data[: 5 * MiB]))
        upload = upload.with_part(await store.upload_part(upload, 2, data[5 * MiB :]))
        await store.complete_upload(upload, sha256=sha(data), size=len(data))
        assert store.url("c1/seg.webm") == f"s3://{bucket}/clinic/a/c1/seg.webm"

    client = s3_server.client()
    # Keys are relative to the configured prefix.
    keys = [o["Key"] for o in client.list_objects_v2(Bucket=bucket)["Contents"]]
    assert sorted(keys) == ["clinic/a/c1/protocol.json", "clinic/a/c1/seg.webm"]
    head = client.head_object(Bucket=bucket, Key="clinic/a/c1/seg.webm", ChecksumMode="ENABLED")
    assert head["ServerSideEncryption"] == "AES256"
    assert head["Metadata"]["sha256"] == sha(data)
    assert head["ContentType"] == "video/webm"
    # The in-place copy left a full-object SHA-256 checksum computed by the server.
    assert head["ChecksumSHA256"] == base64.b64encode(hashlib.sha256(data).digest()).decode()
    small = client.head_object(Bucket=bucket, Key="clinic/a/c1/protocol.json")
    assert small["ServerSideEncryption"] == "AES256"
    assert small["Metadata"]["sha256"] == sha(b"{}")


async def test_s3_large_objects_get_their_hash_by_multipart_copy(
    s3_server: S3Server, bucket: str, tmp_path: Path
) -> None:
    # The same path an object above CopyObject's 5 GiB limit takes, with a small limit.
    settings = s3_settings(s3_server, bucket, tmp_path, s3_sse="AES256")
    data = payload(11 * MiB)
    async with S3Store(settings, copy_limit=6 * MiB, copy_part_size=5 * MiB) as store:
        upload = await store.begin_upload("c1/long.webm", "video/webm")
        for number, start in enumerate(range(0, len(data), 5 * MiB), start=1):
            part = await store.upload_part(upload, number, data[start : start + 5 * MiB])
            upload = upload.with_part(part)
        info = await store.complete_upload(upload, sha256=sha(data), size=len(data))
        assert info.sha256 == sha(data)
        assert await store.get("c1/long.webm") == data
    client = s3_server.client()
    head = client.head_object(Bucket=bucket, Key="telemed/c1/long.webm")
    assert head["Metadata"]["sha256"] == sha(data)
    assert head["ContentType"] == "video/webm"
    assert head["ServerSideEncryption"] == "AES256"
    # The metadata copy's own multipart upload is not left behind.
    assert client.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []


async def test_s3_unreachable_or_missing_bucket_is_unavailable(
    s3_server: S3Server, tmp_path: Path
) -> None:
    nobody = f"http://127.0.0.1:{free_port()}"
    settings = s3_settings(s3_server, "some-bucket", tmp_path, s3_endpoint_url=nobody)
    async with open_store(settings) as store:
        with pytest.raises(StorageUnavailableError):
            await store.put("a.json", b"{}")
    settings = s3_settings(s3_server, "bucket-that-does-not-exist", tmp_path)
    async with open_store(settings) as store:
        with pytest.raises(StorageUnavailableError, match="does not exist"):
            await store.begin_upload("a.webm")


# Settings and loader -----------------------------------------------------------------


def test_loader_chooses_the_backend_by_scheme(tmp_path: Path, s3_server: S3Server) -> None:
    assert isinstance(open_store(file_settings(tmp_path)), FileSystemStore)
    assert isinstance(open_store(s3_settings(s3_server, "b-1", tmp_path)), S3Store)
    relative = StorageSettings(url="file:var/storage", spool_dir=tmp_path)
    assert relative.root == Path("var/storage")


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"url": "gs://bucket/x"}, "not supported"),
        ({"url": "ftp://host/x"}, "not supported"),
        ({"url": "s3:///prefix"}, "no bucket"),
        ({"url": "s3://Bad_Bucket"}, "not a valid S3 bucket"),
        ({"url": "s3://bucket/a/../b"}, "'..'"),
        ({"part_size": 5 * MiB - 1}, "part size"),
        ({"part_size": 6 * 1024**3}, "part size"),
        ({"s3_secret_access_key": None}, "both"),
        ({"s3_sse": "aws:kms-dsse"}, "not supported"),
        ({"s3_sse": "AES256", "s3_sse_kms_key_id": "key"}, "KMS"),
        ({"s3_addressing_style": "sideways"}, "addressing"),
        ({"s3_endpoint_url": "localhost:9000"}, "http"),
        ({"min_free_bytes": -1}, "negative"),
        ({"s3_read_timeout": 0}, "positive"),
    ],
)
def test_s3_settings_are_validated(
    tmp_path: Path, s3_server: S3Server, overrides: dict[str, Any], message: str
) -> None:
    with pytest.raises(StorageConfigError, match=message):
        s3_settings(s3_server, "bucket", tmp_path, **overrides)


@pytest.mark.parametrize(
    ("url", "part_size", "message"),
    [
        ("file://otherhost/var", 64 * 1024, "host"),
        ("file://", 64 * 1024, "no directory"),
        ("file:///var/x", 1024, "part size"),
    ],
)
def test_file_settings_are_validated(
    tmp_path: Path, url: str, part_size: int, message: str
) -> None:
    with pytest.raises(StorageConfigError, match=message):
        StorageSettings(url=url, spool_dir=tmp_path, part_size=part_size)


def test_settings_never_show_the_secret(tmp_path: Path, s3_server: S3Server) -> None:
    settings = s3_settings(s3_server, "bucket", tmp_path, s3_secret_access_key="hunter2-secret")
    assert "hunter2-secret" not in repr(settings)
    assert settings.bucket == "bucket"
    assert settings.prefix == "telemed"


def test_documented_lifecycle_rule_is_accepted_by_s3(s3_server: S3Server, bucket: str) -> None:
    docs = (Path(__file__).resolve().parents[2] / "docs" / "storage.md").read_text("utf-8")
    section = docs.split("## Lifecycle rule", 1)[1]
    rule = json.loads(section.split("```json", 1)[1].split("```", 1)[0])
    client = s3_server.client()
    client.put_bucket_lifecycle_configuration(Bucket=bucket, LifecycleConfiguration=rule)
    (stored,) = client.get_bucket_lifecycle_configuration(Bucket=bucket)["Rules"]
    assert stored["AbortIncompleteMultipartUpload"] == {"DaysAfterInitiation": 7}
    assert stored["Status"] == "Enabled"
