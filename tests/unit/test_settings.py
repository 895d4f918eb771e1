"""Settings come from TELEMED_* variables; bad values are named."""

from __future__ import annotations

from pathlib import Path

import pytest

from telemed.settings import SettingsError, load_settings


def test_defaults_keep_everything_under_the_data_dir(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("TELEMED_DATA_DIR", str(tmp_path))
    settings = load_settings()
    assert (
        settings.effective_database_url
        == f"sqlite+aiosqlite:///{tmp_path.resolve()}/telemed.sqlite3"
    )
    assert settings.keys_dir == tmp_path / "keys"
    assert settings.effective_public_url == "http://127.0.0.1:8080"
    assert settings.signaling.ice.stun_urls == ()
    assert settings.storage.url == (tmp_path / "storage").resolve().as_uri()
    assert settings.storage.spool_dir == tmp_path / "spool"
    assert settings.signaling.whip_url("c1") == "http://127.0.0.1:8080/whip/c1"


def test_environment_variables_override(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TELEMED_DATABASE_URL", "postgresql://app@db:5432/telemed")
    monkeypatch.setenv("TELEMED_PUBLIC_URL", "https://tm.clinic.test/")
    monkeypatch.setenv("TELEMED_STUN_URLS", "stun:a:3478, stun:b:3478")
    settings = load_settings()
    assert settings.effective_database_url == "postgresql+asyncpg://app@db:5432/telemed"
    assert settings.effective_public_url == "https://tm.clinic.test"
    assert settings.signaling.ice.stun_urls == ("stun:a:3478", "stun:b:3478")


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("TELEMED_PORT", "eighty"),
        ("TELEMED_PORT", "70000"),
        ("TELEMED_DATABASE_URL", "mysql://x"),
        ("TELEMED_PUBLIC_URL", "clinic.test"),
        ("TELEMED_STUN_URLS", "http://not-stun"),
        ("TELEMED_LOG_LEVEL", "LOUD"),
        ("TELEMED_RECONNECT_GRACE_SECONDS", "-1"),
    ],
)
def test_a_bad_value_is_reported_with_the_variable_name(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(SettingsError, match=variable):
        load_settings()


def test_turn_needs_exactly_one_secret_source(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("TELEMED_TURN_URLS", "turn:turn.clinic.test:3478")
    with pytest.raises(SettingsError, match="TELEMED_TURN_SECRET"):
        load_settings()
    secret = tmp_path / "turn-secret"
    secret.write_text("from-a-file\n")
    monkeypatch.setenv("TELEMED_TURN_SECRET_PATH", str(secret))
    assert load_settings().signaling.ice.turn_secret == "from-a-file"
    monkeypatch.setenv("TELEMED_TURN_SECRET", "inline")
    with pytest.raises(SettingsError, match="not both"):
        load_settings()


@pytest.mark.parametrize(
    ("variables", "named"),
    [
        ({"TELEMED_STORAGE_URL": "ftp://archive/recordings"}, "TELEMED_STORAGE_URL"),
        ({"TELEMED_STORAGE_URL": "s3://"}, "TELEMED_STORAGE_URL"),
        (
            {"TELEMED_STORAGE_URL": "s3://recordings", "TELEMED_STORAGE_PART_SIZE": "1024"},
            "TELEMED_STORAGE_PART_SIZE",
        ),
        (
            {"TELEMED_STORAGE_URL": "s3://recordings", "TELEMED_S3_ACCESS_KEY_ID": "only-one"},
            "TELEMED_S3_ACCESS_KEY_ID",
        ),
        (
            {"TELEMED_STORAGE_URL": "s3://recordings", "TELEMED_S3_SSE": "rot13"},
            "TELEMED_S3_SSE",
        ),
    ],
)
def test_bad_storage_settings_name_the_variable(
    monkeypatch: pytest.MonkeyPatch, variables: dict[str, str], named: str
) -> None:
    for name, value in variables.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(SettingsError, match=named):
        load_settings()


def test_a_separate_recorder_is_where_pages_publish(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TELEMED_PUBLIC_URL", "https://tm.clinic.test")
    monkeypatch.setenv("TELEMED_RECORDER_URL", "https://media.clinic.test")
    settings = load_settings()
    assert settings.recorder_is_separate
    assert settings.signaling.whip_url("c1") == "https://media.clinic.test/whip/c1"
