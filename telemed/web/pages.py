"""The HTML pages: files under ``pages/`` whose shared parts (the call controls, the
chat) live once under ``pages/partials/``.

A page pulls a partial in with ``<!--#include NAME key=value key="two words" -->``; inside
the partial
``{{key}}`` is replaced by the value. Pages are assembled once, when the app is created,
so a broken include fails at start, not in front of a patient.
"""

from __future__ import annotations

import re
from pathlib import Path

PAGES_DIR = Path(__file__).parent / "pages"
PARTIALS_DIR = PAGES_DIR / "partials"

_VALUE = r'(?:"[^"]*"|[\w.-]+)'
_PARAM = re.compile(rf"([\w-]+)=({_VALUE})")
_INCLUDE = re.compile(rf"<!--#include (?P<name>[\w-]+\.html)(?P<params>(?: [\w-]+={_VALUE})*) -->")
_PLACEHOLDER = re.compile(r"\{\{([\w-]+)\}\}")


class PageError(Exception):
    """A page refers to a missing partial or leaves a placeholder without a value."""


def render_page(name: str, pages_dir: Path = PAGES_DIR) -> str:
    """The page ``name`` with every include resolved."""
    page = (pages_dir / name).read_text(encoding="utf-8")
    return _INCLUDE.sub(lambda match: _partial(name, match, pages_dir / "partials"), page)


def _partial(page: str, match: re.Match[str], partials_dir: Path) -> str:
    path = partials_dir / match["name"]
    if not path.is_file():
        raise PageError(f"{page}: no partial {match['name']} in {partials_dir}")
    values: dict[str, str] = {
        key: value.strip('"') for key, value in _PARAM.findall(match["params"])
    }

    def value(placeholder: re.Match[str]) -> str:
        if placeholder[1] not in values:
            raise PageError(f"{page}: {match['name']} needs {placeholder[1]}=...")
        return values[placeholder[1]]

    return _PLACEHOLDER.sub(value, path.read_text(encoding="utf-8").rstrip("\n"))
