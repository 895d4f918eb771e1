"""the patient's card: FHIR resources, their versions and the search index

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import emr_bridge.tables

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

_KEY = ("resource_type", "resource_id", "param")


def _index_key_columns() -> list[sa.Column[str]]:
    return [
        sa.Column("resource_type", sa.String(length=64), nullable=False),
        sa.Column("resource_id", sa.String(length=64), nullable=False),
        sa.Column("param", sa.String(length=64), nullable=False),
    ]


def upgrade() -> None:
    op.create_table(
        "fhir_resources",
        sa.Column("resource_type", sa.String(length=64), nullable=False),
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("version_id", sa.Integer(), nullable=False),
        sa.Column("last_updated", emr_bridge.tables.UTCDateTime(timezone=True), nullable=False),
        sa.Column("patient_id", sa.String(length=64), nullable=True),
        sa.Column("organization_id", sa.String(length=64), nullable=True),
        sa.Column("content", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("resource_type", "id", name=op.f("pk_fhir_resources")),
    )
    with op.batch_alter_table("fhir_resources", schema=None) as batch_op:
        batch_op.create_index("ix_fhir_resources_patient_id", ["patient_id"], unique=False)
        batch_op.create_index(
            "ix_fhir_resources_organization_id", ["organization_id"], unique=False
        )

    op.create_table(
        "fhir_resource_versions",
        sa.Column("resource_type", sa.String(length=64), nullable=False),
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("version_id", sa.Integer(), nullable=False),
        sa.Column("last_updated", emr_bridge.tables.UTCDateTime(timezone=True), nullable=False),
        sa.Column("method", sa.String(length=8), nullable=False),
        sa.Column("content", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint(
            "resource_type", "id", "version_id", name=op.f("pk_fhir_resource_versions")
        ),
    )

    op.create_table(
        "fhir_search_tokens",
        *_index_key_columns(),
        sa.Column("system", sa.String(length=255), nullable=False),
        sa.Column("code", sa.String(length=255), nullable=False),
        sa.PrimaryKeyConstraint(*_KEY, "system", "code", name=op.f("pk_fhir_search_tokens")),
    )
    with op.batch_alter_table("fhir_search_tokens", schema=None) as batch_op:
        batch_op.create_index(
            "ix_fhir_search_tokens_lookup",
            ["resource_type", "param", "code", "system"],
            unique=False,
        )

    op.create_table(
        "fhir_search_strings",
        *_index_key_columns(),
        sa.Column("value", sa.String(length=255), nullable=False),
        sa.PrimaryKeyConstraint(*_KEY, "value", name=op.f("pk_fhir_search_strings")),
    )
    with op.batch_alter_table("fhir_search_strings", schema=None) as batch_op:
        batch_op.create_index(
            "ix_fhir_search_strings_lookup", ["resource_type", "param", "value"], unique=False
        )

    op.create_table(
        "fhir_search_references",
        *_index_key_columns(),
        sa.Column("target_type", sa.String(length=64), nullable=False),
        sa.Column("target_id", sa.String(length=64), nullable=False),
        sa.PrimaryKeyConstraint(
            *_KEY, "target_type", "target_id", name=op.f("pk_fhir_search_references")
        ),
    )
    with op.batch_alter_table("fhir_search_references", schema=None) as batch_op:
        batch_op.create_index(
            "ix_fhir_search_references_lookup",
            ["target_type", "target_id", "resource_type", "param"],
            unique=False,
        )

    op.create_table(
        "fhir_search_dates",
        *_index_key_columns(),
        sa.Column("low", emr_bridge.tables.UTCDateTime(timezone=True), nullable=False),
        sa.Column("high", emr_bridge.tables.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint(*_KEY, "low", "high", name=op.f("pk_fhir_search_dates")),
    )
    with op.batch_alter_table("fhir_search_dates", schema=None) as batch_op:
        batch_op.create_index(
            "ix_fhir_search_dates_lookup", ["resource_type", "param", "low"], unique=False
        )


def downgrade() -> None:
    for table, index in (
        ("fhir_search_dates", "ix_fhir_search_dates_lookup"),
        ("fhir_search_references", "ix_fhir_search_references_lookup"),
        ("fhir_search_strings", "ix_fhir_search_strings_lookup"),
        ("fhir_search_tokens", "ix_fhir_search_tokens_lookup"),
    ):
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.drop_index(index)
        op.drop_table(table)
    op.drop_table("fhir_resource_versions")
    with op.batch_alter_table("fhir_resources", schema=None) as batch_op:
        batch_op.drop_index("ix_fhir_resources_organization_id")
        batch_op.drop_index("ix_fhir_resources_patient_id")
    op.drop_table("fhir_resources")
