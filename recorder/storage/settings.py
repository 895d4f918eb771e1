"""Storage settings: one frozen value the application fills from its ``TELEMED_*`` environment."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal
from urllib.parse import unquote, urlsplit

from recorder.storage.errors import StorageConfigError

__all__ = [
    "FILE_MIN_PART_SIZE",
    "MAX_PART_SIZE",
    "S3_MIN_PART_SIZE",
    "SUPPORTED_SCHEMES",
    "StorageSettings",
]

MiB = 1024 * 1024
#: S3 refuses every part but the last below 5 MiB (CompleteMultipartUpload: EntityTooSmall).
S3_MIN_PART_SIZE = 5 * MiB
#: The filesystem store has no protocol limit; below this a part file per few packets
#: would only cost inodes and fsyncs.
FILE_MIN_PART_SIZE = 64 * 1024
#: S3's largest part; also the largest single spool read we are willing to hold in memory.
MAX_PART_SIZE = 5 * 1024 * MiB
SUPPORTED_SCHEMES = ("file", "s3")

_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
ServerSideEncryption = Literal["AES256", "aws:kms"]
AddressingStyle = Literal["auto", "virtual", "path"]


@dataclass(frozen=True, slots=True)
class StorageSettings:
    """Where recordings and protocols go and how the local spool behaves.

    ``url`` chooses the backend: ``file:///absolute/dir`` (or ``file:relative/dir``) for
    the embedded filesystem store, ``s3://bucket`` or ``s3://bucket/prefix`` for S3 and
    S3-compatible servers. Every ``s3_*`` field is ignored for ``file://``.

    Leaving both S3 credentials empty lets boto3 find them itself (environment, shared
    config, instance or pod role); giving one without the other is an error.

    ``part_size`` is the multipart part size the spool uploads: at least 5 MiB for S3
    (the protocol's minimum for every part but the last), at least 64 KiB for
    ``file://``, at most 5 GiB. With at most 10,000 parts per upload, 8 MiB parts allow
    segments up to 78 GiB.

    ``min_free_bytes``: the spool refuses to start a segment, and a running segment's
    writer raises :class:`~recorder.spool.SpoolFullError`, when the spool filesystem has
    less than this free.

    Invalid values raise :class:`StorageConfigError` (a ``ValueError``) on construction.
    """

    url: str
    spool_dir: Path
    part_size: int = 8 * MiB
    min_free_bytes: int = 512 * MiB
    s3_endpoint_url: str | None = None
    s3_region: str | None = None
    s3_access_key_id: str | None = None
    s3_secret_access_key: str | None = field(default=None, repr=False)
    s3_sse: ServerSideEncryption | None = None
    s3_sse_kms_key_id: str | None = None
    s3_addressing_style: AddressingStyle = "auto"
    #: Send a SHA-256 checksum with every part and have the server keep a full-object
    #: SHA-256 checksum. Turn off only for S3-compatible servers that reject checksums.
    s3_checksums: bool = True
    s3_connect_timeout: float = 3.0
    #: Longest wait for one socket read or write, not for a whole request; a slow but
    #: moving upload never hits it, a server that stopped answering does.
    s3_read_timeout: float = 20.0

    def __post_init__(self) -> None:
        scheme = self.scheme
        if scheme not in SUPPORTED_SCHEMES:
            raise StorageConfigError(
                f"storage URL scheme {scheme!r} is not supported; "
                f"use one of {', '.join(s + '://' for s in SUPPORTED_SCHEMES)}"
            )
        if scheme == "file":
            self._validate_file()
        else:
            self._validate_s3()
        minimum = S3_MIN_PART_SIZE if scheme == "s3" else FILE_MIN_PART_SIZE
        if not minimum <= self.part_size <= MAX_PART_SIZE:
            raise StorageConfigError(
                f"part size {self.part_size} is out of range for {scheme}://: "
                f"it must be between {minimum} and {MAX_PART_SIZE} bytes"
            )
        if self.min_free_bytes < 0:
            raise StorageConfigError("minimum free spool space must not be negative")
        if not str(self.spool_dir):
            raise StorageConfigError("the spool directory is not set")

    @property
    def scheme(self) -> str:
        """The URL scheme, lower-cased (``file`` or ``s3``)."""
        return urlsplit(self.url).scheme.lower()

    @property
    def root(self) -> Path:
        """The directory of a ``file://`` store."""
        parts = urlsplit(self.url)
        return Path(unquote(parts.path))

    @property
    def bucket(self) -> str:
        """The bucket of an ``s3://`` store."""
        return urlsplit(self.url).netloc

    @property
    def prefix(self) -> str:
        """The key prefix of an ``s3://`` store without surrounding slashes ('' for none)."""
        return unquote(urlsplit(self.url).path).strip("/")

    def _validate_file(self) -> None:
        parts = urlsplit(self.url)
        if parts.netloc not in ("", "localhost"):
            raise StorageConfigError(
                f"file:// storage URL names a host ({parts.netloc!r}); "
                "use file:///absolute/path or file:relative/path"
            )
        if not parts.path:
            raise StorageConfigError("file:// storage URL has no directory")
        if parts.query or parts.fragment:
            raise StorageConfigError("file:// storage URL must not have a query or fragment")

    def _validate_s3(self) -> None:
        parts = urlsplit(self.url)
        if not parts.netloc:
            raise StorageConfigError("s3:// storage URL has no bucket: use s3://bucket/prefix")
        if not _BUCKET.match(parts.netloc) or ".." in parts.netloc:
            raise StorageConfigError(f"{parts.netloc!r} is not a valid S3 bucket name")
        if parts.query or parts.fragment:
            raise StorageConfigError("s3:// storage URL must not have a query or fragment")
        if any(segment in (".", "..") for segment in self.prefix.split("/")):
            raise StorageConfigError("s3:// storage prefix must not contain '.' or '..'")
        if bool(self.s3_access_key_id) != bool(self.s3_secret_access_key):
            raise StorageConfigError(
                "give both the S3 access key id and the secret access key, or neither "
                "(to use boto3's own credential chain)"
            )
        if self.s3_sse not in (None, "AES256", "aws:kms"):
            raise StorageConfigError(
                f"server-side encryption {self.s3_sse!r} is not supported; "
                "use AES256, aws:kms or none"
            )
        if self.s3_sse_kms_key_id and self.s3_sse != "aws:kms":
            raise StorageConfigError("a KMS key id is only used with aws:kms encryption")
        if self.s3_addressing_style not in ("auto", "virtual", "path"):
            raise StorageConfigError(
                f"S3 addressing style {self.s3_addressing_style!r} is not one of "
                "auto, virtual, path"
            )
        if self.s3_endpoint_url is not None:
            endpoint = urlsplit(self.s3_endpoint_url)
            if endpoint.scheme not in ("http", "https") or not endpoint.netloc:
                raise StorageConfigError(
                    f"S3 endpoint URL {self.s3_endpoint_url!r} is not an http(s) URL"
                )
        if self.s3_connect_timeout <= 0 or self.s3_read_timeout <= 0:
            raise StorageConfigError("S3 timeouts must be positive")
