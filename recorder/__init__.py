"""The media side of telemed: WHIP ingest, pass-through WebM recording, storage, protocol.

It imports nothing of ``signaling``, ``emr_bridge`` or ``telemed``; the application
wires it in: it builds a :class:`Recorder` over a :class:`Spool` and an object store,
implements :class:`RecordingLedger`, and serves the WHIP endpoint in front of
:meth:`Recorder.publish`.
"""

from recorder.protocol import (
    ConsentRecord,
    ProtocolClinical,
    ProtocolContext,
    ProtocolDiagnosis,
    ProtocolDocument,
    ProtocolEvent,
    ProtocolParticipant,
    ProtocolParty,
    ProtocolPrescription,
    SegmentRecord,
    build_protocol,
    document_key,
    protocol_key,
    signature_key,
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
from recorder.signing import (
    Ed25519Signer,
    ProtocolSignature,
    ProtocolSigner,
    SignatureError,
    canonical_json,
    key_fingerprint,
    verify_signature,
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
    "Ed25519Signer",
    "ObjectInfo",
    "ObjectNotFoundError",
    "ObjectStore",
    "OfferError",
    "ProtocolClinical",
    "ProtocolContext",
    "ProtocolDiagnosis",
    "ProtocolDocument",
    "ProtocolEvent",
    "ProtocolParticipant",
    "ProtocolParty",
    "ProtocolPrescription",
    "ProtocolSignature",
    "ProtocolSigner",
    "Publication",
    "PublishGrant",
    "Recorder",
    "RecorderFullError",
    "RecorderUnavailableError",
    "RecordingLedger",
    "RecoveryReport",
    "SegmentRecord",
    "SignatureError",
    "Spool",
    "SpoolFullError",
    "StorageConfigError",
    "StorageSettings",
    "build_protocol",
    "canonical_json",
    "document_key",
    "key_fingerprint",
    "open_store",
    "protocol_key",
    "segment_key",
    "signature_key",
    "verify_signature",
]
