"""Configuration values the signaling package needs, built by whoever wires it in."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class IceSettings:
    """STUN/TURN servers handed to browsers; TURN credentials use coturn's shared secret."""

    stun_urls: tuple[str, ...] = ()
    turn_urls: tuple[str, ...] = ()
    turn_secret: str | None = None
    turn_ttl_seconds: int = 3600

    def __post_init__(self) -> None:
        if self.turn_urls and not self.turn_secret:
            raise ValueError("TURN URLs need a shared secret")
        if self.turn_ttl_seconds <= 0:
            raise ValueError("turn_ttl_seconds must be positive")


@dataclass(frozen=True)
class SignalingSettings:
    ice: IceSettings = field(default_factory=IceSettings)
    # Token bucket per connection: enough for a burst of ICE candidates, not for a flood.
    rate_per_second: float = 30.0
    burst: int = 120
    # Base URL of the recorder's WHIP endpoints (…/whip/<consultation>) that pages publish
    # to while recording; None when this deployment records nothing.
    whip_base_url: str | None = None

    def whip_url(self, consultation_id: str) -> str | None:
        if self.whip_base_url is None:
            return None
        return f"{self.whip_base_url.rstrip('/')}/whip/{consultation_id}"
