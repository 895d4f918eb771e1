"""One frozen settings object, read from ``TELEMED_*`` environment variables.

Every embedded default lives under ``TELEMED_DATA_DIR``: the SQLite file, the signing
keys, later the file storage. Each package gets its own small section built from these
fields, so ``signaling`` never has to know about pydantic or the environment.
"""

from __future__ import annotations

import ipaddress
import json
from functools import cached_property
from pathlib import Path
from typing import Annotated, Any

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from recorder.storage import StorageConfigError, StorageSettings
from signaling import IceSettings, SignalingSettings
from telemed.identity.oidc import OidcIssuer

ENV_PREFIX = "TELEMED_"


class SettingsError(Exception):
    """Settings could not be loaded; the message names the offending variables."""


def _split_list(value: Any) -> Any:
    if isinstance(value, str):
        return [item.strip() for item in value.split(",") if item.strip()]
    return value


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, frozen=True, extra="ignore")

    data_dir: Path = Field(default=Path("./var"), description="Holds every embedded default.")
    database_url: str | None = Field(
        default=None, description="SQLAlchemy URL; SQLite under the data dir when unset."
    )
    host: str = Field(default="127.0.0.1", description="Address `telemed serve` listens on.")
    port: int = Field(default=8080, ge=1, le=65535, description="Port `telemed serve` listens on.")
    public_url: str | None = Field(
        default=None,
        description="Base of every link the service prints; http://HOST:PORT when unset.",
    )
    recorder_url: str | None = Field(
        default=None,
        description="Public base URL of the recorder's WHIP endpoints (/whip/...); "
        "the public URL when unset (the recorder runs inside `telemed serve`).",
    )
    trusted_proxies: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Comma-separated addresses or networks of the reverse proxies in "
        "front; their X-Forwarded-For names the client (consent journal, audit log).",
    )
    redis_url: str | None = Field(
        default=None,
        description="Redis for Socket.IO fan-out across several nodes; in-process when unset.",
    )
    redis_channel: str = Field(
        default="telemed",
        min_length=1,
        description="Redis pub/sub channel of the Socket.IO fan-out; "
        "deployments sharing one Redis use one channel each.",
    )
    log_level: str = Field(default="INFO", description="Python logging level.")

    access_token_ttl_seconds: int = Field(
        default=3600, ge=60, description="Lifetime of access tokens."
    )
    join_ticket_ttl_seconds: int = Field(
        default=7200, ge=60, description="Lifetime of a join ticket (the link a participant opens)."
    )
    review_media_ttl_seconds: int = Field(
        default=300,
        ge=10,
        le=900,
        description="Lifetime of a signed media link of the review page (one recording "
        "segment); the page renews links before they expire.",
    )
    login_max_failures: int = Field(
        default=5,
        ge=1,
        le=1000,
        description="Failed sign-ins (wrong password or code) before a username is locked.",
    )
    login_lockout_seconds: int = Field(
        default=900, ge=1, description="How long a username stays locked after too many failures."
    )
    step_up_max_age_seconds: int = Field(
        default=900,
        ge=1,
        description="Finalizing clinical records needs a second factor at most this old.",
    )
    refresh_token_ttl_seconds: int = Field(
        default=7 * 86400, ge=60, description="Lifetime of a refresh token (each use rotates it)."
    )
    oidc_issuers: Annotated[list[OidcIssuer], NoDecode] = Field(
        default_factory=list,
        description="External OIDC issuers whose access tokens telemed accepts: a JSON list "
        "of objects (issuer, audience, roles, ...; see the README's section on them).",
    )

    reconnect_grace_seconds: int = Field(
        default=60,
        ge=0,
        description="A dropped participant who returns within this keeps their place.",
    )
    signaling_rate_per_second: float = Field(
        default=30.0, gt=0, description="Sustained Socket.IO messages per second per connection."
    )
    signaling_burst: int = Field(
        default=120, ge=1, description="Socket.IO messages a connection may send in a burst."
    )

    stun_urls: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="Comma-separated stun: URLs; none by default."
    )
    turn_urls: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="Comma-separated turn:/turns: URLs (coturn)."
    )
    turn_secret: str | None = Field(
        default=None, description="coturn static-auth-secret (use-auth-secret)."
    )
    turn_secret_path: Path | None = Field(
        default=None, description="File holding the coturn secret, instead of TELEMED_TURN_SECRET."
    )
    turn_ttl_seconds: int = Field(default=3600, ge=60, description="Lifetime of TURN credentials.")

    fhir_upstream_url: str | None = Field(
        default=None,
        description="An external FHIR server (its base URL) that receives every "
        "consultation written into the card, through an outbox that retries.",
    )
    fhir_upstream_token: str | None = Field(
        default=None, description="Bearer token for the FHIR upstream."
    )
    fhir_upstream_token_path: Path | None = Field(
        default=None,
        description="File holding the upstream's bearer token, instead of "
        "TELEMED_FHIR_UPSTREAM_TOKEN.",
    )
    fhir_upstream_max_attempts: int = Field(
        default=10,
        ge=1,
        le=1000,
        description="Failed deliveries before a message is parked as a dead letter.",
    )
    consent_texts_dir: Path | None = Field(
        default=None,
        description="Directory of the consent-to-processing texts (<version>.txt, "
        "the version that sorts last is current); the texts shipped with telemed when unset.",
    )

    notifications: bool = Field(
        default=True,
        description="Reminders and notifications (in-page, e-mail, webhook); false stops "
        "their worker and scheduler in this process.",
    )
    notification_reminder_minutes: Annotated[list[int], NoDecode] = Field(
        default_factory=lambda: [1440, 15],
        description="Comma-separated minutes before an appointment at which its "
        "participants are reminded (24 h and 15 min by default).",
    )
    notification_timezone: str = Field(
        default="Europe/Moscow", description="Time zone of the times written in reminders."
    )
    notification_scan_seconds: float = Field(
        default=60.0, gt=0, description="How often the scheduler looks for reminders due."
    )
    notification_poll_seconds: float = Field(
        default=2.0,
        gt=0,
        description="How often the worker and each in-page stream look for new notifications.",
    )
    notification_max_attempts: int = Field(
        default=50,
        ge=1,
        le=10000,
        description="Failed deliveries before a notification is marked failed.",
    )
    notification_retry_base_seconds: float = Field(
        default=15.0, gt=0, description="Wait after a failed delivery; doubles with each failure."
    )
    notification_retry_max_seconds: float = Field(
        default=3600.0, gt=0, description="Longest wait between two delivery attempts."
    )
    webhook_allow_private: bool = Field(
        default=False,
        description="Let users' webhooks use http:// and private or loopback addresses "
        "(tests, a closed network); https:// to public addresses only when false.",
    )
    smtp_host: str | None = Field(
        default=None, description="SMTP server for notification e-mail; no e-mail when unset."
    )
    smtp_port: int = Field(default=587, ge=1, le=65535, description="SMTP port.")
    smtp_user: str | None = Field(
        default=None, description="SMTP user name; no SMTP authentication when unset."
    )
    smtp_password: SecretStr | None = Field(default=None, description="SMTP password.")
    smtp_from: str | None = Field(
        default=None, description="From address of notification e-mail (needed with a host)."
    )
    smtp_starttls: bool = Field(
        default=True,
        description="Require STARTTLS on the SMTP connection; false only for a local relay.",
    )

    recording: bool = Field(
        default=True,
        description="Offer recording (with every participant's consent); false turns it off.",
    )
    pdf_font: Path | None = Field(
        default=None,
        description="Cyrillic TrueType font embedded in protocol.pdf (a -Bold.ttf beside it "
        "is used for headings); when unset, Roboto from the font-roboto package, else "
        "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf.",
    )
    storage_url: str | None = Field(
        default=None,
        description="Where recordings and protocols go: file:///dir or s3://bucket/prefix; "
        "DATA_DIR/storage when unset.",
    )
    storage_part_size: int = Field(
        default=8 * 1024 * 1024,
        description="Multipart part size in bytes (at least 5 MiB for S3); parts upload "
        "while the call goes on.",
    )
    spool_dir: Path | None = Field(
        default=None,
        description="Local disk where recordings are written first; DATA_DIR/spool when unset.",
    )
    spool_min_free_bytes: int = Field(
        default=512 * 1024 * 1024,
        ge=0,
        description="Recording stops cleanly when the spool disk has less free space.",
    )
    s3_endpoint_url: str | None = Field(
        default=None, description="S3 endpoint (MinIO, another S3-compatible server); AWS if unset."
    )
    s3_region: str | None = Field(
        default=None, description="S3 region (the storage region: keep data in Russia)."
    )
    s3_access_key_id: str | None = Field(
        default=None, description="S3 access key; boto3's own credential chain when unset."
    )
    s3_secret_access_key: str | None = Field(default=None, description="S3 secret key.")
    s3_sse: str | None = Field(
        default=None, description="Server-side encryption: AES256 or aws:kms; none when unset."
    )
    s3_sse_kms_key_id: str | None = Field(default=None, description="KMS key for aws:kms.")
    s3_addressing_style: str = Field(
        default="auto", description="S3 addressing: auto, virtual or path (MinIO: path)."
    )
    s3_connect_timeout: float = Field(
        default=3.0, gt=0, description="Seconds to wait for a connection to S3."
    )
    s3_read_timeout: float = Field(
        default=20.0,
        gt=0,
        description="Seconds S3 may stay silent on one socket read or write before the "
        "request is retried (an outage never loses data: the spool keeps it).",
    )
    s3_checksums: bool = Field(
        default=True,
        description="Send SHA-256 checksums to S3; turn off for servers that reject them.",
    )

    audit_key: SecretStr | None = Field(
        default=None,
        description="Key of the audit log's MAC (at least 32 characters); never stored in "
        "the database. DATA_DIR/keys/audit.key (generated) when neither is set.",
    )
    audit_key_path: Path | None = Field(
        default=None, description="File holding the audit log's key, instead of TELEMED_AUDIT_KEY."
    )

    @field_validator("oidc_issuers", mode="before")
    @classmethod
    def _oidc_json(cls, value: Any) -> Any:
        # Parsed here, not by pydantic-settings, so bad JSON is a message, not a traceback.
        if isinstance(value, str):
            try:
                return json.loads(value) if value.strip() else []
            except json.JSONDecodeError as exc:
                raise ValueError(f"not a JSON list of issuers ({exc.msg})") from None
        return value

    @field_validator("trusted_proxies")
    @classmethod
    def _networks(cls, proxies: list[str]) -> list[str]:
        for proxy in proxies:
            try:
                ipaddress.ip_network(proxy, strict=False)
            except ValueError:
                raise ValueError(f"{proxy!r} is not an IP address or network") from None
        return proxies

    @field_validator("stun_urls", "turn_urls", "trusted_proxies", mode="before")
    @classmethod
    def _comma_list(cls, value: Any) -> Any:
        return _split_list(value)

    @field_validator("stun_urls")
    @classmethod
    def _stun_scheme(cls, urls: list[str]) -> list[str]:
        for url in urls:
            if not url.startswith(("stun:", "stuns:")):
                raise ValueError(f"{url!r} is not a stun: or stuns: URL")
        return urls

    @field_validator("turn_urls")
    @classmethod
    def _turn_scheme(cls, urls: list[str]) -> list[str]:
        for url in urls:
            if not url.startswith(("turn:", "turns:")):
                raise ValueError(f"{url!r} is not a turn: or turns: URL")
        return urls

    @field_validator("database_url")
    @classmethod
    def _database_driver(cls, url: str | None) -> str | None:
        if url is None:
            return None
        if url.startswith(("postgres://", "postgresql://")):
            # Accept the URL every PostgreSQL tool prints; we talk to it through asyncpg.
            return "postgresql+asyncpg://" + url.split("://", 1)[1]
        if not url.startswith(("postgresql+asyncpg://", "sqlite+aiosqlite://")):
            raise ValueError("use postgresql+asyncpg://... or sqlite+aiosqlite:///...")
        return url

    @field_validator("fhir_upstream_url")
    @classmethod
    def _upstream_url(cls, url: str | None) -> str | None:
        if url is None:
            return None
        if not url.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return url.rstrip("/")

    @field_validator("public_url")
    @classmethod
    def _public_url(cls, url: str | None) -> str | None:
        if url is None:
            return None
        if not url.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return url.rstrip("/")

    @field_validator("log_level")
    @classmethod
    def _log_level(cls, level: str) -> str:
        level = level.upper()
        if level not in {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}:
            raise ValueError("one of DEBUG, INFO, WARNING, ERROR, CRITICAL")
        return level

    @field_validator("notification_reminder_minutes", mode="before")
    @classmethod
    def _reminder_list(cls, value: Any) -> Any:
        return _split_list(value)

    @field_validator("notification_reminder_minutes")
    @classmethod
    def _reminder_minutes(cls, minutes: list[int]) -> list[int]:
        if any(m <= 0 for m in minutes):
            raise ValueError("minutes before an appointment must be positive")
        return sorted(set(minutes), reverse=True)

    @field_validator("notification_timezone")
    @classmethod
    def _notification_zone(cls, zone: str) -> str:
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        try:
            ZoneInfo(zone)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"{zone!r} is not a known time zone") from None
        return zone

    @model_validator(mode="after")
    def _smtp_sender(self) -> Settings:
        if self.smtp_host and not self.smtp_from:
            raise ValueError("TELEMED_SMTP_HOST needs TELEMED_SMTP_FROM")
        if self.notification_retry_max_seconds < self.notification_retry_base_seconds:
            raise ValueError(
                "TELEMED_NOTIFICATION_RETRY_MAX_SECONDS is below "
                "TELEMED_NOTIFICATION_RETRY_BASE_SECONDS"
            )
        return self

    @model_validator(mode="after")
    def _upstream_token_once(self) -> Settings:
        if self.fhir_upstream_token and self.fhir_upstream_token_path:
            raise ValueError(
                "set TELEMED_FHIR_UPSTREAM_TOKEN or TELEMED_FHIR_UPSTREAM_TOKEN_PATH, not both"
            )
        return self

    @field_validator("audit_key")
    @classmethod
    def _audit_key_length(cls, key: SecretStr | None) -> SecretStr | None:
        if key is not None and len(key.get_secret_value().strip()) < 32:
            raise ValueError("the audit key must be at least 32 characters")
        return key

    @model_validator(mode="after")
    def _audit_key_once(self) -> Settings:
        if self.audit_key is not None and self.audit_key_path is not None:
            raise ValueError("set TELEMED_AUDIT_KEY or TELEMED_AUDIT_KEY_PATH, not both")
        return self

    @model_validator(mode="after")
    def _turn_secret_once(self) -> Settings:
        if self.turn_secret and self.turn_secret_path:
            raise ValueError("set TELEMED_TURN_SECRET or TELEMED_TURN_SECRET_PATH, not both")
        if self.turn_urls and not (self.turn_secret or self.turn_secret_path):
            raise ValueError(
                "TELEMED_TURN_URLS needs TELEMED_TURN_SECRET or TELEMED_TURN_SECRET_PATH"
            )
        return self

    # Derived values -------------------------------------------------------------------

    @property
    def effective_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite+aiosqlite:///{(self.data_dir / 'telemed.sqlite3').resolve()}"

    @property
    def effective_public_url(self) -> str:
        return self.public_url or f"http://{self.host}:{self.port}"

    @property
    def fhir_upstream_bearer(self) -> str | None:
        """The upstream's token, read from its file when given as a path."""
        if self.fhir_upstream_token_path is not None:
            return self.fhir_upstream_token_path.read_text(encoding="utf-8").strip()
        return self.fhir_upstream_token

    @property
    def recorder_is_separate(self) -> bool:
        """True when pages publish to a recorder other than this web node."""
        return bool(self.recorder_url) and self.recorder_url != self.effective_public_url

    @property
    def effective_storage_url(self) -> str:
        if self.storage_url:
            return self.storage_url
        return (self.data_dir / "storage").resolve().as_uri()

    @cached_property
    def storage(self) -> StorageSettings:
        """The recorder's storage section; StorageConfigError for an invalid combination."""
        return StorageSettings(
            url=self.effective_storage_url,
            spool_dir=self.spool_dir or self.data_dir / "spool",
            part_size=self.storage_part_size,
            min_free_bytes=self.spool_min_free_bytes,
            s3_endpoint_url=self.s3_endpoint_url,
            s3_region=self.s3_region,
            s3_access_key_id=self.s3_access_key_id,
            s3_secret_access_key=self.s3_secret_access_key,
            s3_sse=self.s3_sse,  # type: ignore[arg-type]  # checked by StorageSettings
            s3_sse_kms_key_id=self.s3_sse_kms_key_id,
            s3_addressing_style=self.s3_addressing_style,  # type: ignore[arg-type]
            s3_checksums=self.s3_checksums,
            s3_connect_timeout=self.s3_connect_timeout,
            s3_read_timeout=self.s3_read_timeout,
        )

    @property
    def keys_dir(self) -> Path:
        return self.data_dir / "keys"

    @property
    def practitioner_keys_dir(self) -> Path:
        """Doctors' protocol-signing keys, one PEM file each (never in the database)."""
        return self.keys_dir / "practitioners"

    @cached_property
    def signaling(self) -> SignalingSettings:
        secret = self.turn_secret
        if self.turn_secret_path is not None:
            secret = self.turn_secret_path.read_text(encoding="utf-8").strip()
        return SignalingSettings(
            ice=IceSettings(
                stun_urls=tuple(self.stun_urls),
                turn_urls=tuple(self.turn_urls),
                turn_secret=secret,
                turn_ttl_seconds=self.turn_ttl_seconds,
            ),
            rate_per_second=self.signaling_rate_per_second,
            burst=self.signaling_burst,
            # No recorder, no consent to ask: pages hide it when there is nowhere to publish.
            whip_base_url=(self.recorder_url or self.effective_public_url)
            if self.recording
            else None,
        )


def load_settings(**overrides: Any) -> Settings:
    """Read the environment (plus ``overrides``); raise SettingsError naming each bad variable."""
    try:
        settings = Settings(**overrides)
        path = settings.fhir_upstream_token_path
        if path is not None and not path.is_file():
            raise SettingsError(f"TELEMED_FHIR_UPSTREAM_TOKEN_PATH: no such file: {path}")
        if settings.audit_key_path is not None and not settings.audit_key_path.is_file():
            raise SettingsError(f"TELEMED_AUDIT_KEY_PATH: no such file: {settings.audit_key_path}")
        if settings.turn_secret_path is not None and not settings.turn_secret_path.is_file():
            raise SettingsError(
                f"TELEMED_TURN_SECRET_PATH: no such file: {settings.turn_secret_path}"
            )
        if settings.recording:
            _check_pdf_font(settings.pdf_font)
        try:
            settings.storage  # noqa: B018 - validates the combination of storage settings
        except StorageConfigError as exc:
            raise SettingsError(
                f"invalid settings:\n  {_storage_variables(str(exc))}: {exc}"
            ) from None
        return settings
    except ValidationError as exc:
        lines = []
        for error in exc.errors():
            location = [str(part) for part in error["loc"]]
            name = ENV_PREFIX + location[0].upper() if location else "settings"
            lines.append(f"{name}: {error['msg']}")
        raise SettingsError("invalid settings:\n  " + "\n  ".join(lines)) from None


_STORAGE_VARIABLES = (
    ("part size", "TELEMED_STORAGE_PART_SIZE"),
    ("access key", "TELEMED_S3_ACCESS_KEY_ID / TELEMED_S3_SECRET_ACCESS_KEY"),
    ("kms", "TELEMED_S3_SSE_KMS_KEY_ID"),
    ("encryption", "TELEMED_S3_SSE"),
    ("addressing", "TELEMED_S3_ADDRESSING_STYLE"),
    ("endpoint", "TELEMED_S3_ENDPOINT_URL"),
    ("free", "TELEMED_SPOOL_MIN_FREE_BYTES"),
    ("spool", "TELEMED_SPOOL_DIR"),
)


def _storage_variables(message: str) -> str:
    """The variable a storage refusal is about (the storage URL unless it names another)."""
    lowered = message.lower()
    for words, variable in _STORAGE_VARIABLES:
        if words in lowered:
            return variable
    return "TELEMED_STORAGE_URL"


def _check_pdf_font(setting: Path | None) -> None:
    """Protocols need a Cyrillic font: refuse to start without one (the error names
    TELEMED_PDF_FONT)."""
    # Imported here: fpdf2 loads only where settings ask for recording.
    from telemed.protocols.pdf import PdfFontError, resolve_font

    try:
        resolve_font(setting)
    except PdfFontError as exc:
        raise SettingsError(str(exc)) from None


def settings_table() -> list[tuple[str, str, str]]:
    """(variable, default, description) for every setting: the README's table comes from here."""
    rows = []
    for name, field in Settings.model_fields.items():
        default = field.default_factory() if field.default_factory else field.default  # type: ignore[call-arg]
        rows.append(
            (
                ENV_PREFIX + name.upper(),
                "" if default in (None, []) else str(default),
                field.description or "",
            )
        )
    return rows
