"""Pages are assembled from shared partials once, at start; a broken include fails early."""

from __future__ import annotations

from pathlib import Path

import pytest

from telemed.web.pages import PageError, render_page

CALL_CONTROLS = ("mute-audio", "mute-video", "hangup", "chat-log", "chat-input", "chat-send")


@pytest.mark.parametrize("page", ["doctor.html", "patient.html"])
def test_both_pages_carry_the_shared_call_controls_and_chat(page: str) -> None:
    html = render_page(page)
    assert "<!--#include" not in html
    assert "{{" not in html
    for testid in CALL_CONTROLS:
        assert html.count(f'data-testid="{testid}"') == 1, testid


def test_each_page_names_its_own_hang_up() -> None:
    assert 'data-i18n="ctl.end"' in render_page("doctor.html")
    assert 'data-i18n="ctl.leave"' in render_page("patient.html")


def test_a_missing_partial_or_value_fails_when_the_page_is_assembled(tmp_path: Path) -> None:
    (tmp_path / "partials").mkdir()
    (tmp_path / "partials" / "greeting.html").write_text("<p>{{who}}</p>\n", encoding="utf-8")
    (tmp_path / "ok.html").write_text("<!--#include greeting.html who=врач -->", "utf-8")
    (tmp_path / "no-value.html").write_text("<!--#include greeting.html -->", "utf-8")
    (tmp_path / "no-partial.html").write_text("<!--#include absent.html -->", "utf-8")

    assert render_page("ok.html", tmp_path) == "<p>врач</p>"
    with pytest.raises(PageError, match="needs who"):
        render_page("no-value.html", tmp_path)
    with pytest.raises(PageError, match=r"no partial absent\.html"):
        render_page("no-partial.html", tmp_path)
