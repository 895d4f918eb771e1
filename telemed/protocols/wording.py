"""The doctor's finalized record as the protocol words it: Russian names for the coded
dosage forms, units and routes of e-prescriptions (the console's own Russian wording)."""

from __future__ import annotations

from recorder import ProtocolClinical, ProtocolDiagnosis, ProtocolPrescription
from telemed.consultations.clinical import ConsultationClinicalRecord, RecordPrescription

__all__ = ["protocol_clinical"]

FORMS = {
    "tablet": "таблетки",
    "film_coated_tablet": "таблетки, покрытые оболочкой",
    "capsule": "капсулы",
    "oral_solution": "раствор для приёма внутрь",
    "suspension": "суспензия",
    "syrup": "сироп",
    "powder": "порошок",
    "drops": "капли",
    "nasal_spray": "спрей назальный",
    "inhaler": "аэрозоль для ингаляций",
    "injection": "раствор для инъекций",
    "infusion": "раствор для инфузий",
    "ointment": "мазь",
    "cream": "крем",
    "gel": "гель",
    "suppository": "суппозитории",
    "patch": "трансдермальный пластырь",
    "other": "другая форма",
}
UNITS = {
    "mg": "мг",
    "g": "г",
    "mcg": "мкг",
    "ml": "мл",
    "IU": "МЕ",
    "drop": "капли",
    "tablet": "табл.",
    "capsule": "капс.",
    "puff": "доз (вдохов)",
    "sachet": "пакетик",
    "application": "нанесение",
}
ROUTES = {
    "oral": "внутрь",
    "sublingual": "под язык",
    "rectal": "ректально",
    "vaginal": "вагинально",
    "topical": "наружно",
    "transdermal": "трансдермально",
    "inhalation": "ингаляционно",
    "nasal": "интраназально",
    "ophthalmic": "в глаза",
    "otic": "в уши",
    "intravenous": "внутривенно",
    "intramuscular": "внутримышечно",
    "subcutaneous": "подкожно",
    "other": "другой путь",
}
PACKAGES = {
    "package": "уп.",
    "tablet": "табл.",
    "capsule": "капс.",
    "bottle": "флак.",
    "ampoule": "амп.",
    "vial": "фл.",
    "tube": "туба",
}


def protocol_clinical(record: ConsultationClinicalRecord) -> ProtocolClinical:
    """What the protocol carries of ``record`` (finalized content only)."""
    note = record.note
    return ProtocolClinical(
        conclusion=(note.conclusion or None) if note else None,
        recommendations=(note.recommendations or None) if note else None,
        finalized_at=record.finalized_at,
        diagnoses=[
            ProtocolDiagnosis(d.code, d.display, d.primary, d.comment) for d in record.diagnoses
        ],
        prescriptions=[_prescription(p) for p in record.prescriptions],
    )


def _prescription(p: RecordPrescription) -> ProtocolPrescription:
    frequency = p.frequency_text or (f"{p.times_per_day} р/сут" if p.times_per_day else None)
    dose = [
        f"{p.dose_value.normalize():f} {UNITS.get(p.dose_unit, p.dose_unit)}",
        p.route_text or ROUTES.get(p.route, p.route),
        frequency,
    ]
    return ProtocolPrescription(
        id=p.series_id,
        medication=f"{p.inn}, {p.form_text or FORMS.get(p.form, p.form)}",
        dose=", ".join(part for part in dose if part),
        duration_days=p.duration_days,
        quantity=f"{p.quantity} {PACKAGES.get(p.quantity_unit, p.quantity_unit)}",
        valid_until=p.valid_until.isoformat(),
        instructions=p.instructions,
    )
