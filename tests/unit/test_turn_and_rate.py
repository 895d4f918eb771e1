"""TURN credentials (coturn's shared-secret scheme) and the per-connection rate limit."""

from __future__ import annotations

import base64
import hashlib
import hmac

import pytest

from signaling import IceSettings, ice_servers, turn_credentials
from signaling.ratelimit import TokenBucket


def test_turn_credentials_follow_coturns_shared_secret_scheme() -> None:
    username, credential = turn_credentials("s3cret", "participant-1", 600, now=1_000_000)
    assert username == "1000600:participant-1"
    expected = base64.b64encode(hmac.new(b"s3cret", username.encode(), hashlib.sha1).digest())
    assert credential == expected.decode()


def test_no_ice_servers_by_default() -> None:
    assert ice_servers(IceSettings(), "p") == []


def test_each_participant_gets_their_own_expiring_turn_credentials() -> None:
    settings = IceSettings(
        stun_urls=("stun:turn.clinic.test:3478",),
        turn_urls=("turn:turn.clinic.test:3478?transport=udp",),
        turn_secret="s",
        turn_ttl_seconds=60,
    )
    first = ice_servers(settings, "a", now=100)
    second = ice_servers(settings, "b", now=100)
    assert first[0] == {"urls": ["stun:turn.clinic.test:3478"]}
    assert first[1]["username"] == "160:a"
    assert second[1]["username"] == "160:b"
    assert first[1]["credential"] != second[1]["credential"]


def test_turn_urls_without_a_secret_are_a_configuration_error() -> None:
    with pytest.raises(ValueError, match="secret"):
        IceSettings(turn_urls=("turn:x",))


def test_the_bucket_allows_a_burst_then_the_sustained_rate() -> None:
    now = [0.0]
    bucket = TokenBucket(rate=2, burst=3, clock=lambda: now[0])
    assert [bucket.take() for _ in range(4)] == [True, True, True, False]
    now[0] += 0.5
    assert bucket.take()
    assert not bucket.take()
    now[0] += 100
    assert sum(bucket.take() for _ in range(10)) == 3
