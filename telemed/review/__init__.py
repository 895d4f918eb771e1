"""The clinic's review of recorded consultations: search, synchronized playback of the
participants' recordings with the timeline, and the protocol's integrity on demand."""

from telemed.review.media import MediaGrant, MediaTokens
from telemed.review.service import MEDIA_PATH, ReviewQuery, ReviewService

__all__ = ["MEDIA_PATH", "MediaGrant", "MediaTokens", "ReviewQuery", "ReviewService"]
