"""consent to recording, the recording flag, recorded segments and the protocol

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import telemed.db

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("consultations", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("recording", sa.Boolean(), nullable=False, server_default=sa.false())
        )
        batch_op.add_column(sa.Column("protocol_key", sa.String(length=512), nullable=True))
        batch_op.add_column(sa.Column("protocol_sha256", sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column("protocol_size", sa.BigInteger(), nullable=True))
        batch_op.add_column(
            sa.Column("recording_final_at", telemed.db.UTCDateTime(timezone=True), nullable=True)
        )
    with op.batch_alter_table("participants", schema=None) as batch_op:
        batch_op.add_column(sa.Column("recording_consent", sa.String(length=16), nullable=True))
        batch_op.add_column(
            sa.Column("consent_at", telemed.db.UTCDateTime(timezone=True), nullable=True)
        )
    op.create_index(
        "ix_consultations_state_final",
        "consultations",
        ["state", "recording_final_at"],
        unique=False,
    )
    # Consultations that ended before recording existed have nothing to finalize.
    op.execute("UPDATE consultations SET recording_final_at = ended_at WHERE state = 'finished'")
    op.create_table(
        "recording_segments",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("consultation_id", sa.String(length=36), nullable=False),
        sa.Column("participant_id", sa.String(length=36), nullable=False),
        sa.Column("sequence", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("object_key", sa.String(length=512), nullable=False),
        sa.Column("content_type", sa.String(length=64), nullable=False),
        sa.Column("codecs", sa.JSON(), nullable=False),
        sa.Column("started_at", telemed.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("ended_at", telemed.db.UTCDateTime(timezone=True), nullable=True),
        sa.Column("duration_ms", sa.Integer(), nullable=True),
        sa.Column("size_bytes", sa.BigInteger(), nullable=True),
        sa.Column("sha256", sa.String(length=64), nullable=True),
        sa.Column("stats", sa.JSON(), nullable=True),
        sa.ForeignKeyConstraint(
            ["consultation_id"],
            ["consultations.id"],
            name=op.f("fk_recording_segments_consultation_id_consultations"),
        ),
        sa.ForeignKeyConstraint(
            ["participant_id"],
            ["participants.id"],
            name=op.f("fk_recording_segments_participant_id_participants"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_recording_segments")),
    )
    op.create_index(
        "ix_recording_segments_consultation",
        "recording_segments",
        ["consultation_id", "started_at"],
        unique=False,
    )
    op.create_index(
        "ix_recording_segments_object_key", "recording_segments", ["object_key"], unique=False
    )
    op.create_index(
        "uq_recording_segments_participant_sequence",
        "recording_segments",
        ["participant_id", "sequence"],
        unique=True,
    )


def downgrade() -> None:
    op.drop_index("uq_recording_segments_participant_sequence", table_name="recording_segments")
    op.drop_index("ix_recording_segments_object_key", table_name="recording_segments")
    op.drop_index("ix_recording_segments_consultation", table_name="recording_segments")
    op.drop_table("recording_segments")
    with op.batch_alter_table("participants", schema=None) as batch_op:
        batch_op.drop_column("consent_at")
        batch_op.drop_column("recording_consent")
    op.drop_index("ix_consultations_state_final", table_name="consultations")
    with op.batch_alter_table("consultations", schema=None) as batch_op:
        batch_op.drop_column("recording_final_at")
        batch_op.drop_column("protocol_size")
        batch_op.drop_column("protocol_sha256")
        batch_op.drop_column("protocol_key")
        batch_op.drop_column("recording")
