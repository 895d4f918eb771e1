"""the doctor's clinical input: notes, diagnoses, prescriptions, referrals

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import telemed.db

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "clinical_notes",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("consultation_id", sa.String(length=36), nullable=False),
        sa.Column("revision", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("complaints", sa.Text(), nullable=False),
        sa.Column("anamnesis", sa.Text(), nullable=False),
        sa.Column("findings", sa.Text(), nullable=False),
        sa.Column("conclusion", sa.Text(), nullable=False),
        sa.Column("recommendations", sa.Text(), nullable=False),
        sa.Column("author_practitioner_id", sa.String(length=36), nullable=False),
        sa.Column("created_at", telemed.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("updated_at", telemed.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("finalized_at", telemed.db.UTCDateTime(timezone=True), nullable=True),
        sa.Column("corrects_id", sa.String(length=36), nullable=True),
        sa.ForeignKeyConstraint(
            ["author_practitioner_id"],
            ["practitioners.id"],
            name=op.f("fk_clinical_notes_author_practitioner_id_practitioners"),
        ),
        sa.ForeignKeyConstraint(
            ["consultation_id"],
            ["consultations.id"],
            name=op.f("fk_clinical_notes_consultation_id_consultations"),
        ),
        sa.ForeignKeyConstraint(
            ["corrects_id"],
            ["clinical_notes.id"],
            name=op.f("fk_clinical_notes_corrects_id_clinical_notes"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_clinical_notes")),
    )
    op.create_index(
        "uq_clinical_notes_consultation_revision",
        "clinical_notes",
        ["consultation_id", "revision"],
        unique=True,
    )
    op.create_table(
        "clinical_diagnoses",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("note_id", sa.String(length=36), nullable=False),
        sa.Column("code", sa.String(length=8), nullable=False),
        sa.Column("display", sa.String(length=300), nullable=False),
        sa.Column("is_primary", sa.Boolean(), nullable=False),
        sa.Column("comment", sa.String(length=500), nullable=True),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("created_at", telemed.db.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["note_id"],
            ["clinical_notes.id"],
            name=op.f("fk_clinical_diagnoses_note_id_clinical_notes"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_clinical_diagnoses")),
    )
    op.create_index(
        "uq_clinical_diagnoses_note_code", "clinical_diagnoses", ["note_id", "code"], unique=True
    )
    op.create_table(
        "clinical_referrals",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("note_id", sa.String(length=36), nullable=False),
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("target", sa.String(length=200), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("urgency", sa.String(length=16), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("created_at", telemed.db.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["note_id"],
            ["clinical_notes.id"],
            name=op.f("fk_clinical_referrals_note_id_clinical_notes"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_clinical_referrals")),
    )
    op.create_index(
        op.f("ix_clinical_referrals_note_id"), "clinical_referrals", ["note_id"], unique=False
    )
    op.create_table(
        "clinical_prescriptions",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("consultation_id", sa.String(length=36), nullable=False),
        sa.Column("series_id", sa.String(length=36), nullable=False),
        sa.Column("revision", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("inn", sa.String(length=200), nullable=False),
        sa.Column("form", sa.String(length=32), nullable=False),
        sa.Column("form_text", sa.String(length=200), nullable=True),
        sa.Column("dose_value", sa.String(length=32), nullable=False),
        sa.Column("dose_unit", sa.String(length=16), nullable=False),
        sa.Column("route", sa.String(length=32), nullable=False),
        sa.Column("route_text", sa.String(length=200), nullable=True),
        sa.Column("times_per_day", sa.Integer(), nullable=True),
        sa.Column("frequency_text", sa.String(length=200), nullable=True),
        sa.Column("duration_days", sa.Integer(), nullable=False),
        sa.Column("quantity", sa.Integer(), nullable=False),
        sa.Column("quantity_unit", sa.String(length=16), nullable=False),
        sa.Column("valid_days", sa.Integer(), nullable=False),
        sa.Column("instructions", sa.String(length=1000), nullable=True),
        sa.Column("author_practitioner_id", sa.String(length=36), nullable=False),
        sa.Column("created_at", telemed.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("updated_at", telemed.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("finalized_at", telemed.db.UTCDateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["author_practitioner_id"],
            ["practitioners.id"],
            name=op.f("fk_clinical_prescriptions_author_practitioner_id_practitioners"),
        ),
        sa.ForeignKeyConstraint(
            ["consultation_id"],
            ["consultations.id"],
            name=op.f("fk_clinical_prescriptions_consultation_id_consultations"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_clinical_prescriptions")),
    )
    op.create_index(
        "ix_clinical_prescriptions_consultation",
        "clinical_prescriptions",
        ["consultation_id", "created_at"],
        unique=False,
    )
    op.create_index(
        "uq_clinical_prescriptions_series_revision",
        "clinical_prescriptions",
        ["series_id", "revision"],
        unique=True,
    )


def downgrade() -> None:
    op.drop_index("uq_clinical_prescriptions_series_revision", table_name="clinical_prescriptions")
    op.drop_index("ix_clinical_prescriptions_consultation", table_name="clinical_prescriptions")
    op.drop_table("clinical_prescriptions")
    op.drop_index(op.f("ix_clinical_referrals_note_id"), table_name="clinical_referrals")
    op.drop_table("clinical_referrals")
    op.drop_index("uq_clinical_diagnoses_note_code", table_name="clinical_diagnoses")
    op.drop_table("clinical_diagnoses")
    op.drop_index("uq_clinical_notes_consultation_revision", table_name="clinical_notes")
    op.drop_table("clinical_notes")
