"""Schemas of what browsers may send."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from signaling.messages import MAX_SDP_CHARS, ChatMessage, JoinMessage, SignalMessage

SDP = "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\n"


def test_a_description_or_a_candidate_is_a_valid_signal() -> None:
    offer = SignalMessage.model_validate(
        {"to": "p-1", "description": {"type": "offer", "sdp": SDP}}
    )
    assert offer.description is not None
    assert offer.candidate is None
    candidate = SignalMessage.model_validate(
        {"to": "p-1", "candidate": {"candidate": "", "sdpMid": "0", "sdpMLineIndex": 0}}
    )
    assert candidate.candidate is not None


@pytest.mark.parametrize(
    "payload",
    [
        {"to": "p", "description": {"type": "offer", "sdp": "v=0" + "x" * MAX_SDP_CHARS}},
        {"to": "p", "description": {"type": "offer", "sdp": "not sdp"}},
        {"to": "p", "description": {"type": "rollback", "sdp": SDP}},
        {"to": "p"},
        {"to": "p", "description": {"type": "offer", "sdp": SDP}, "candidate": {"candidate": ""}},
        {"to": "", "description": {"type": "offer", "sdp": SDP}},
        {"to": "a/b", "description": {"type": "offer", "sdp": SDP}},
        {"to": "p", "candidate": {"candidate": "x" * 2000}},
        {"to": "p", "candidate": {"candidate": "", "sdpMLineIndex": -1}},
        {"to": "p", "description": {"type": "offer", "sdp": SDP}, "extra": 1},
        ["to", "p"],
    ],
)
def test_oversized_or_malformed_signals_are_refused(payload: Any) -> None:
    with pytest.raises(ValidationError):
        SignalMessage.model_validate(payload)


def test_chat_text_is_trimmed_and_bounded() -> None:
    assert ChatMessage.model_validate({"text": "  добрый день  "}).text == "добрый день"
    with pytest.raises(ValidationError):
        ChatMessage.model_validate({"text": "   "})
    with pytest.raises(ValidationError):
        ChatMessage.model_validate({"text": "я" * 4001})


def test_a_page_instance_is_a_short_token() -> None:
    assert JoinMessage.model_validate({"instance": "a1_b-2"}).instance == "a1_b-2"
    for bad in ("", "x" * 65, "a b", "<script>"):
        with pytest.raises(ValidationError):
            JoinMessage.model_validate({"instance": bad})
