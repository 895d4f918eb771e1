"""indexes that make the card's reads and writes fast

A patient's compartment is read by ``$everything`` ordered by type and id: an index on
(patient_id, resource_type, id) returns it in that order without a sort, and serves every
lookup by patient_id alone, so it replaces the single-column index.

Revision ID: 0006
Revises: 0005
"""

from __future__ import annotations

from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("fhir_resources", schema=None) as batch_op:
        batch_op.create_index(
            "ix_fhir_resources_compartment", ["patient_id", "resource_type", "id"], unique=False
        )
        batch_op.drop_index("ix_fhir_resources_patient_id")


def downgrade() -> None:
    with op.batch_alter_table("fhir_resources", schema=None) as batch_op:
        batch_op.create_index("ix_fhir_resources_patient_id", ["patient_id"], unique=False)
        batch_op.drop_index("ix_fhir_resources_compartment")
