"""The media side of telemed: WHIP ingest, pass-through WebM recording, storage, protocol.

It imports nothing of ``signaling``, ``emr_bridge`` or ``telemed``; the application
wires it in: it builds a :class:`Recorder` over a :class:`Spool` and an object store,
implements :class:`RecordingLedger`, and serves the WHIP endpoint in front of
:meth:`Recorder.publish`.
"""

from recorder.protocol import (
    ConsentRecord,
    ProtocolContext,
    ProtocolEvent,
    ProtocolParticipant,
    SegmentRecord,
    build_protocol,
    protocol_key,
)
from recorder.recorder import (
    OfferError,
    Publication,
    PublishGrant,
    Recorder,
    RecorderFullError,
    RecorderUnavailableError,
    RecordingLedger,
    segment_key,
)
from recorder.spool import RecoveryReport, Spool, SpoolFullError
from recorder.storage import (
    ObjectInfo,
    ObjectNotFoundError,
    ObjectStore,
    StorageConfigError,
    StorageSettings,
    open_store,
)

__all__ = [
    "ConsentRecord",
    "ObjectInfo",
    "ObjectNotFoundError",
    "ObjectStore",
    "OfferError",
    "ProtocolContext",
    "ProtocolEvent",
    "ProtocolParticipant",
    "Publication",
    "PublishGrant",
    "Recorder",
    "RecorderFullError",
    "RecorderUnavailableError",
    "RecordingLedger",
    "RecoveryReport",
    "SegmentRecord",
    "Spool",
    "SpoolFullError",
    "StorageConfigError",
    "StorageSettings",
    "build_protocol",
    "open_store",
    "protocol_key",
    "segment_key",
]
