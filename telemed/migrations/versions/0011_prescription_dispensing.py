"""prescription verification and dispensing

Revision ID: 0011
Revises: 0010
"""

from __future__ import annotations

import secrets
from datetime import UTC, datetime, timedelta

import sqlalchemy as sa
from alembic import op

import telemed.db

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "prescription_dispensing",
        sa.Column("prescription_id", sa.String(length=36), nullable=False),
        sa.Column("verification_id", sa.String(length=64), nullable=False),
        sa.Column("series_id", sa.String(length=36), nullable=False),
        sa.Column("consultation_id", sa.String(length=36), nullable=False),
        sa.Column("patient_id", sa.String(length=36), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("issued_at", telemed.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("valid_until", sa.Date(), nullable=False),
        sa.Column("dispensed_at", telemed.db.UTCDateTime(timezone=True), nullable=True),
        sa.Column("dispensed_by", sa.String(length=36), nullable=True),
        sa.Column("pharmacy_name", sa.String(length=200), nullable=True),
        sa.Column("cancelled_at", telemed.db.UTCDateTime(timezone=True), nullable=True),
        sa.Column("cancelled_by", sa.String(length=36), nullable=True),
        sa.Column("cancel_reason", sa.String(length=16), nullable=True),
        sa.ForeignKeyConstraint(
            ["prescription_id"],
            ["clinical_prescriptions.id"],
            name=op.f("fk_prescription_dispensing_prescription_id_clinical_prescriptions"),
        ),
        sa.ForeignKeyConstraint(
            ["consultation_id"],
            ["consultations.id"],
            name=op.f("fk_prescription_dispensing_consultation_id_consultations"),
        ),
        sa.ForeignKeyConstraint(
            ["patient_id"],
            ["patients.id"],
            name=op.f("fk_prescription_dispensing_patient_id_patients"),
        ),
        sa.ForeignKeyConstraint(
            ["dispensed_by"],
            ["user_accounts.id"],
            name=op.f("fk_prescription_dispensing_dispensed_by_user_accounts"),
        ),
        sa.ForeignKeyConstraint(
            ["cancelled_by"],
            ["user_accounts.id"],
            name=op.f("fk_prescription_dispensing_cancelled_by_user_accounts"),
        ),
        sa.PrimaryKeyConstraint("prescription_id", name=op.f("pk_prescription_dispensing")),
        sa.UniqueConstraint(
            "verification_id", name=op.f("uq_prescription_dispensing_verification_id")
        ),
    )
    for column in ("series_id", "consultation_id", "patient_id"):
        op.create_index(
            op.f(f"ix_prescription_dispensing_{column}"),
            "prescription_dispensing",
            [column],
            unique=False,
        )
    op.create_table(
        "pharmacist_workplaces",
        sa.Column("user_id", sa.String(length=36), nullable=False),
        sa.Column("pharmacy_name", sa.String(length=200), nullable=False),
        sa.ForeignKeyConstraint(
            ["user_id"],
            ["user_accounts.id"],
            name=op.f("fk_pharmacist_workplaces_user_id_user_accounts"),
        ),
        sa.PrimaryKeyConstraint("user_id", name=op.f("pk_pharmacist_workplaces")),
    )
    _issue_existing()


def _issue_existing() -> None:
    """Prescriptions finalized before this migration get their verification identifier
    now: the newest final revision of each series, active, valid as it always was."""
    connection = op.get_bind()
    rows = connection.execute(
        sa.text(
            "SELECT p.id, p.series_id, p.revision, p.consultation_id, p.finalized_at,"
            " p.valid_days, a.patient_id"
            " FROM clinical_prescriptions p"
            " JOIN consultations c ON c.id = p.consultation_id"
            " JOIN appointments a ON a.id = c.appointment_id"
            " WHERE p.status = 'final' AND p.finalized_at IS NOT NULL"
        )
    ).all()
    newest: dict[str, sa.Row[tuple[object, ...]]] = {}
    for row in rows:
        kept = newest.get(row.series_id)
        if kept is None or row.revision > kept.revision:
            newest[row.series_id] = row
    table = sa.table(
        "prescription_dispensing",
        sa.column("prescription_id", sa.String()),
        sa.column("verification_id", sa.String()),
        sa.column("series_id", sa.String()),
        sa.column("consultation_id", sa.String()),
        sa.column("patient_id", sa.String()),
        sa.column("status", sa.String()),
        sa.column("issued_at", telemed.db.UTCDateTime(timezone=True)),
        sa.column("valid_until", sa.Date()),
    )
    values = []
    for row in newest.values():
        finalized = row.finalized_at
        if isinstance(finalized, str):  # SQLite without the ORM type hands back text
            finalized = datetime.fromisoformat(finalized)
        if finalized.tzinfo is None:
            finalized = finalized.replace(tzinfo=UTC)
        values.append(
            {
                "prescription_id": row.id,
                "verification_id": secrets.token_urlsafe(24),
                "series_id": row.series_id,
                "consultation_id": row.consultation_id,
                "patient_id": row.patient_id,
                "status": "active",
                "issued_at": finalized,
                "valid_until": (finalized + timedelta(days=row.valid_days)).date(),
            }
        )
    if values:
        op.bulk_insert(table, values)


def downgrade() -> None:
    op.drop_table("pharmacist_workplaces")
    for column in ("patient_id", "consultation_id", "series_id"):
        op.drop_index(
            op.f(f"ix_prescription_dispensing_{column}"), table_name="prescription_dispensing"
        )
    op.drop_table("prescription_dispensing")
