"""consent to processing, correction and restriction requests

Revision ID: 0014
Revises: 0013
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import telemed.db

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "processing_consents",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("user_id", sa.String(length=36), nullable=False),
        sa.Column("version", sa.String(length=64), nullable=False),
        sa.Column("accepted_at", telemed.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("client_ip", sa.String(length=64), nullable=True),
        sa.Column("user_agent", sa.String(length=300), nullable=True),
        sa.ForeignKeyConstraint(
            ["user_id"],
            ["user_accounts.id"],
            name=op.f("fk_processing_consents_user_id_user_accounts"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_processing_consents")),
    )
    op.create_index(
        "ix_processing_consents_user_version",
        "processing_consents",
        ["user_id", "version"],
        unique=True,
    )
    op.create_table(
        "rights_requests",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("patient_id", sa.String(length=36), nullable=False),
        sa.Column("clinic_id", sa.String(length=36), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("details", sa.Text(), nullable=True),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("filed_by", sa.String(length=36), nullable=False),
        sa.Column("filed_at", telemed.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("resolved_by", sa.String(length=36), nullable=True),
        sa.Column("resolved_at", telemed.db.UTCDateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["patient_id"], ["patients.id"], name=op.f("fk_rights_requests_patient_id_patients")
        ),
        sa.ForeignKeyConstraint(
            ["clinic_id"], ["clinics.id"], name=op.f("fk_rights_requests_clinic_id_clinics")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_rights_requests")),
    )
    op.create_index(
        "ix_rights_requests_patient",
        "rights_requests",
        ["patient_id", "filed_at"],
        unique=False,
    )
    op.create_index(
        "ix_rights_requests_clinic",
        "rights_requests",
        ["clinic_id", "status", "filed_at"],
        unique=False,
    )
    op.create_table(
        "card_restrictions",
        sa.Column("patient_id", sa.String(length=36), nullable=False),
        sa.Column("clinic_id", sa.String(length=36), nullable=False),
        sa.Column("request_id", sa.String(length=36), nullable=False),
        sa.Column("restricted_at", telemed.db.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["patient_id"],
            ["patients.id"],
            name=op.f("fk_card_restrictions_patient_id_patients"),
        ),
        sa.ForeignKeyConstraint(
            ["clinic_id"], ["clinics.id"], name=op.f("fk_card_restrictions_clinic_id_clinics")
        ),
        sa.ForeignKeyConstraint(
            ["request_id"],
            ["rights_requests.id"],
            name=op.f("fk_card_restrictions_request_id_rights_requests"),
        ),
        sa.PrimaryKeyConstraint("patient_id", name=op.f("pk_card_restrictions")),
    )
    op.create_index(
        op.f("ix_card_restrictions_clinic_id"), "card_restrictions", ["clinic_id"], unique=False
    )


def downgrade() -> None:
    op.drop_index(op.f("ix_card_restrictions_clinic_id"), table_name="card_restrictions")
    op.drop_table("card_restrictions")
    op.drop_index("ix_rights_requests_clinic", table_name="rights_requests")
    op.drop_index("ix_rights_requests_patient", table_name="rights_requests")
    op.drop_table("rights_requests")
    op.drop_index("ix_processing_consents_user_version", table_name="processing_consents")
    op.drop_table("processing_consents")
