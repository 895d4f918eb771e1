"""doctors' schedules and patients' bookings

Revision ID: 0012
Revises: 0011
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import telemed.db

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "schedule_slots",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("clinic_id", sa.String(length=36), nullable=False),
        sa.Column("practitioner_id", sa.String(length=36), nullable=False),
        sa.Column("starts_at", telemed.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("ends_at", telemed.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("published_by", sa.String(length=36), nullable=False),
        sa.Column("published_at", telemed.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("appointment_id", sa.String(length=36), nullable=True),
        sa.Column("patient_id", sa.String(length=36), nullable=True),
        sa.Column("booked_at", telemed.db.UTCDateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["appointment_id"],
            ["appointments.id"],
            name=op.f("fk_schedule_slots_appointment_id_appointments"),
        ),
        sa.ForeignKeyConstraint(
            ["clinic_id"], ["clinics.id"], name=op.f("fk_schedule_slots_clinic_id_clinics")
        ),
        sa.ForeignKeyConstraint(
            ["patient_id"], ["patients.id"], name=op.f("fk_schedule_slots_patient_id_patients")
        ),
        sa.ForeignKeyConstraint(
            ["practitioner_id"],
            ["practitioners.id"],
            name=op.f("fk_schedule_slots_practitioner_id_practitioners"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_schedule_slots")),
    )
    # One booking per slot is the row itself; these keep one appointment in one slot and
    # one start per doctor, whatever a racing request does.
    op.create_index(
        "uq_schedule_slots_practitioner_starts",
        "schedule_slots",
        ["practitioner_id", "starts_at"],
        unique=True,
    )
    op.create_index(
        "uq_schedule_slots_appointment", "schedule_slots", ["appointment_id"], unique=True
    )
    op.create_index("ix_schedule_slots_clinic_starts", "schedule_slots", ["clinic_id", "starts_at"])
    op.create_index("ix_schedule_slots_patient", "schedule_slots", ["patient_id"])


def downgrade() -> None:
    op.drop_index("ix_schedule_slots_patient", table_name="schedule_slots")
    op.drop_index("ix_schedule_slots_clinic_starts", table_name="schedule_slots")
    op.drop_index("uq_schedule_slots_appointment", table_name="schedule_slots")
    op.drop_index("uq_schedule_slots_practitioner_starts", table_name="schedule_slots")
    op.drop_table("schedule_slots")
