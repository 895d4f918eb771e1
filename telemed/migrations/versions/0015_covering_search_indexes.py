"""the card's search indexes cover their lookups

Each search-index table's primary key holds every column, so it covers any query on the
table; SQLite, without statistics, prefers a covering index and used the key's
``resource_type`` prefix alone, scanning every index row of the type (an ``identifier=``
lookup slowed as the card grew). With ``resource_id`` (and a date's ``high``) appended,
each lookup index covers its queries too and is chosen for them; PostgreSQL gets
index-only scans from the same change.

Revision ID: 0015
Revises: 0014
"""

from __future__ import annotations

from alembic import op

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None

# (table, index, columns before, columns now)
_LOOKUPS = (
    (
        "fhir_search_tokens",
        "ix_fhir_search_tokens_lookup",
        ["resource_type", "param", "code", "system"],
        ["resource_type", "param", "code", "system", "resource_id"],
    ),
    (
        "fhir_search_strings",
        "ix_fhir_search_strings_lookup",
        ["resource_type", "param", "value"],
        ["resource_type", "param", "value", "resource_id"],
    ),
    (
        "fhir_search_references",
        "ix_fhir_search_references_lookup",
        ["target_type", "target_id", "resource_type", "param"],
        ["target_type", "target_id", "resource_type", "param", "resource_id"],
    ),
    (
        "fhir_search_dates",
        "ix_fhir_search_dates_lookup",
        ["resource_type", "param", "low"],
        ["resource_type", "param", "low", "high", "resource_id"],
    ),
)


def upgrade() -> None:
    for table, index, _before, now in _LOOKUPS:
        op.drop_index(index, table_name=table)
        op.create_index(index, table, now, unique=False)


def downgrade() -> None:
    for table, index, before, _now in _LOOKUPS:
        op.drop_index(index, table_name=table)
        op.create_index(index, table, before, unique=False)
