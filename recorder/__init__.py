"""The media side of telemed: WHIP ingest, pass-through WebM recording, storage, protocol.

It imports nothing of ``signaling``, ``emr_bridge`` or ``telemed``; the application
wires it in.
"""
