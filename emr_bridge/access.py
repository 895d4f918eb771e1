"""Who sees what in the card.

The application turns its own tokens into an :class:`Accessor`; the card never sees a
token. Rules the repository applies to every interaction:

* a **patient** reads only their own compartment: their Patient resource and every
  resource that names it as its patient. They write nothing.
* a **practitioner** reads the compartments of patients whose
  ``Patient.managingOrganization`` is their organization, and resources that belong to no
  patient (Organization, Practitioner). They write only where the
  :class:`PractitionerWritePolicy` allows — the application's hook for "only through a
  consultation they conduct"; the default allows nothing.
  A practitioner's ``withheld_patients`` are compartments whose processing the patient
  restricted (the application decides whom that spares, e.g. the treating doctor): they
  are out of this practitioner's reach.
* a **delegate** (a trusted person patients chose) reads, of each patient that
  delegated to them, exactly the resource types delegated, and nothing else; they write
  nothing. The application builds it from the delegations in force at the request.
* the **system** (the bridge, the outbox worker) reads and writes everything.

A resource outside the accessor's reach is answered as if it did not exist (404), never
403, so guessing ids or following someone else's search link tells nothing.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Protocol

from emr_bridge.validation import is_valid_id


class AccessorKind(StrEnum):
    PATIENT = "patient"
    PRACTITIONER = "practitioner"
    DELEGATE = "delegate"
    SYSTEM = "system"


@dataclass(frozen=True)
class Accessor:
    """Who is asking. Build it with :meth:`patient`, :meth:`practitioner`, :meth:`delegate`
    or :meth:`system`.

    ``subject`` is the application's user (or service) id, reported to the audit sink as
    is; ``client_address`` is where the request came from, for the audit log only;
    ``amr`` says how the user authenticated (OIDC ``amr`` values such as ``pwd``,
    ``otp``), for the write policy's strong-authentication rule. ``delegated`` is what a
    delegate reads: (Patient id, resource types of its compartment) pairs;
    ``withheld_patients`` are compartments out of a practitioner's reach (restricted
    processing).
    """

    kind: AccessorKind
    subject: str
    patient_id: str | None = None
    practitioner_id: str | None = None
    organization_id: str | None = None
    client_address: str | None = None
    amr: tuple[str, ...] = ()
    delegated: tuple[tuple[str, frozenset[str]], ...] = ()
    withheld_patients: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        if not self.subject:
            raise ValueError("an accessor needs a subject")
        if self.kind is AccessorKind.PATIENT and not is_valid_id(self.patient_id):
            raise ValueError("a patient accessor needs the FHIR id of its Patient")
        if self.kind is AccessorKind.PRACTITIONER and not (
            is_valid_id(self.practitioner_id) and is_valid_id(self.organization_id)
        ):
            raise ValueError("a practitioner accessor needs Practitioner and Organization ids")
        if self.kind is AccessorKind.DELEGATE and not (
            self.delegated
            and all(is_valid_id(patient) and types for patient, types in self.delegated)
        ):
            raise ValueError("a delegate accessor needs Patient ids, each with some types")

    @classmethod
    def patient(
        cls, subject: str, patient_id: str, *, client_address: str | None = None
    ) -> Accessor:
        return cls(
            AccessorKind.PATIENT, subject, patient_id=patient_id, client_address=client_address
        )

    @classmethod
    def practitioner(
        cls,
        subject: str,
        practitioner_id: str,
        organization_id: str,
        *,
        client_address: str | None = None,
        amr: tuple[str, ...] = (),
        withheld_patients: frozenset[str] = frozenset(),
    ) -> Accessor:
        return cls(
            AccessorKind.PRACTITIONER,
            subject,
            practitioner_id=practitioner_id,
            organization_id=organization_id,
            client_address=client_address,
            amr=amr,
            withheld_patients=withheld_patients,
        )

    @classmethod
    def delegate(
        cls,
        subject: str,
        delegated: Mapping[str, frozenset[str]],
        *,
        client_address: str | None = None,
    ) -> Accessor:
        """Reads, for each Patient id of ``delegated``, those resource types of its
        compartment and nothing else (name ``Patient`` to read the Patient itself)."""
        return cls(
            AccessorKind.DELEGATE,
            subject,
            client_address=client_address,
            delegated=tuple(sorted(delegated.items())),
        )

    @classmethod
    def system(cls, subject: str, *, client_address: str | None = None) -> Accessor:
        return cls(AccessorKind.SYSTEM, subject, client_address=client_address)


class PractitionerWritePolicy(Protocol):
    """Decides whether a practitioner may write ``resource`` (the proposed version).

    ``current`` is the stored version on an update (None on a create). The application
    implements it with its knowledge of consultations: "the doctor of a consultation that
    is in progress writes that consultation's resources"; strong authentication is
    checked there too.
    """

    async def allows(
        self, accessor: Accessor, resource: Mapping[str, Any], current: Mapping[str, Any] | None
    ) -> bool: ...


class NoPractitionerWrites:
    """The default policy: practitioners write nothing through the card's API."""

    async def allows(
        self, accessor: Accessor, resource: Mapping[str, Any], current: Mapping[str, Any] | None
    ) -> bool:
        return False
