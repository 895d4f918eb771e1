"""delivery of the card to an external FHIR server: the outbox

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import emr_bridge.tables

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "card_outbox",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("dedupe_key", sa.String(length=64), nullable=False),
        sa.Column("session_id", sa.String(length=64), nullable=False),
        sa.Column("bundle", sa.Text(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("created_at", emr_bridge.tables.UTCDateTime(timezone=True), nullable=False),
        sa.Column("next_attempt_at", emr_bridge.tables.UTCDateTime(timezone=True), nullable=False),
        sa.Column("lease_owner", sa.String(length=64), nullable=True),
        sa.Column("lease_expires_at", emr_bridge.tables.UTCDateTime(timezone=True), nullable=True),
        sa.Column("last_attempt_at", emr_bridge.tables.UTCDateTime(timezone=True), nullable=True),
        sa.Column("last_error", sa.String(length=1000), nullable=True),
        sa.Column("delivered_at", emr_bridge.tables.UTCDateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_card_outbox")),
        sa.UniqueConstraint("dedupe_key", name="uq_card_outbox_dedupe_key"),
    )
    with op.batch_alter_table("card_outbox", schema=None) as batch_op:
        batch_op.create_index(
            "ix_card_outbox_due", ["status", "next_attempt_at", "id"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("card_outbox", schema=None) as batch_op:
        batch_op.drop_index("ix_card_outbox_due")
    op.drop_table("card_outbox")
