"""Whose data a request is about."""

from __future__ import annotations

from telemed.identity.policy import Role
from telemed.identity.tokens import AccessClaims
from telemed.problems import Forbidden


def own_patient(claims: AccessClaims) -> str:
    """The Patient id of a patient's token; 403 for anyone else (a patient's rights are
    exercised by the patient)."""
    if claims.role != Role.PATIENT.value or not claims.patient_id:
        raise Forbidden("only a patient exercises the rights over their own data")
    return claims.patient_id
