"""One frozen settings object, read from ``TELEMED_*`` environment variables.

Every embedded default lives under ``TELEMED_DATA_DIR``: the SQLite file, the signing
keys, later the file storage. Each package gets its own small section built from these
fields, so ``signaling`` never has to know about pydantic or the environment.
"""

from __future__ import annotations

from functools import cached_property
from pathlib import Path
from typing import Annotated, Any

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from signaling import IceSettings, SignalingSettings

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

    @field_validator("stun_urls", "turn_urls", mode="before")
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
    def keys_dir(self) -> Path:
        return self.data_dir / "keys"

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
        )


def load_settings(**overrides: Any) -> Settings:
    """Read the environment (plus ``overrides``); raise SettingsError naming each bad variable."""
    try:
        settings = Settings(**overrides)
        if settings.turn_secret_path is not None and not settings.turn_secret_path.is_file():
            raise SettingsError(
                f"TELEMED_TURN_SECRET_PATH: no such file: {settings.turn_secret_path}"
            )
        return settings
    except ValidationError as exc:
        lines = []
        for error in exc.errors():
            location = [str(part) for part in error["loc"]]
            name = ENV_PREFIX + location[0].upper() if location else "settings"
            lines.append(f"{name}: {error['msg']}")
        raise SettingsError("invalid settings:\n  " + "\n  ".join(lines)) from None


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
