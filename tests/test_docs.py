"""The README documents every setting."""

from __future__ import annotations

from pathlib import Path

from telemed.settings import settings_table

README = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")


def test_every_setting_is_in_the_readme_table() -> None:
    missing = [name for name, _, _ in settings_table() if f"| `{name}` |" not in README]
    assert missing == []
