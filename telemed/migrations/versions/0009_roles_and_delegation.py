"""roles, delegations to trusted persons and policy

Revision ID: 0009
Revises: 0008
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import telemed.db

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "delegations",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("patient_id", sa.String(length=36), nullable=False),
        sa.Column("granted_by", sa.String(length=36), nullable=False),
        sa.Column("delegate_id", sa.String(length=36), nullable=False),
        sa.Column("sections", sa.String(length=200), nullable=False),
        sa.Column("created_at", telemed.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("expires_at", telemed.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("revoked_at", telemed.db.UTCDateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["patient_id"], ["patients.id"], name=op.f("fk_delegations_patient_id_patients")
        ),
        sa.ForeignKeyConstraint(
            ["granted_by"],
            ["user_accounts.id"],
            name=op.f("fk_delegations_granted_by_user_accounts"),
        ),
        sa.ForeignKeyConstraint(
            ["delegate_id"],
            ["user_accounts.id"],
            name=op.f("fk_delegations_delegate_id_user_accounts"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_delegations")),
    )
    op.create_index(
        "ix_delegations_delegate", "delegations", ["delegate_id", "expires_at"], unique=False
    )
    op.create_index(
        "ix_delegations_patient", "delegations", ["patient_id", "created_at"], unique=False
    )


def downgrade() -> None:
    op.drop_index("ix_delegations_patient", table_name="delegations")
    op.drop_index("ix_delegations_delegate", table_name="delegations")
    op.drop_table("delegations")
