"""The patient's card: FHIR R4 resources, their versioned store, the FHIR REST API,
the mapping of consultation results to resources and delivery to an external server.

It imports nothing of ``signaling``, ``recorder`` or ``telemed``; the application
wires it in.
"""
