"""The card's tables: current resources, every version, and the search index.

SQLAlchemy Core on emr_bridge's own :data:`metadata` (the application's Alembic
environment includes it). Constraint names follow the same convention as the
application's tables, so migrations can name them on SQLite and PostgreSQL alike.

* ``fhir_resources`` holds the current version of each resource (one row per
  ``resource_type``/``id``), the compartment it belongs to (``patient_id``) and, for a
  Patient, its managing organization (``organization_id``) — the two columns access
  control filters on.
* ``fhir_resource_versions`` holds every version ever written, the current one included;
  nothing is deleted or overwritten there (order 947n: earlier versions are kept).
* ``fhir_search_*`` index the search values of the current version, written in the same
  transaction as the resource, so a search is an index lookup rather than a JSON scan.
* ``card_outbox`` holds the transaction Bundles still to be delivered to an external
  FHIR server (and those delivered or given up on), written in the same transaction as
  the resources they carry; :mod:`emr_bridge.outbox` owns it.
"""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import (
    Column,
    DateTime,
    Index,
    Integer,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
    UniqueConstraint,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.types import TypeDecorator

# The same convention as telemed/db.py (emr_bridge may not import telemed).
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

metadata = MetaData(naming_convention=NAMING_CONVENTION)

# FHIR ids are at most 64 characters; resource type names are shorter still.
ID_LENGTH = 64
TYPE_LENGTH = 64
# Token systems are URIs and codes may be long identifiers; both are indexed.
TOKEN_LENGTH = 255


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC on every backend (SQLite keeps no zone; we put it back)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime: pass an aware UTC time")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


fhir_resources = Table(
    "fhir_resources",
    metadata,
    Column("resource_type", String(TYPE_LENGTH), nullable=False),
    Column("id", String(ID_LENGTH), nullable=False),
    Column("version_id", Integer, nullable=False),
    Column("last_updated", UTCDateTime(), nullable=False),
    # The Patient whose compartment holds this resource (a Patient holds itself).
    Column("patient_id", String(ID_LENGTH), nullable=True),
    # Patient.managingOrganization, on Patient rows only: the clinic whose staff may read.
    Column("organization_id", String(ID_LENGTH), nullable=True),
    Column("content", Text, nullable=False),
    PrimaryKeyConstraint("resource_type", "id"),
    # A patient's compartment in ($everything's) order: found and read in index order,
    # no sort; it serves every lookup by patient_id alone as well.
    Index("ix_fhir_resources_compartment", "patient_id", "resource_type", "id"),
    Index("ix_fhir_resources_organization_id", "organization_id"),
)

fhir_resource_versions = Table(
    "fhir_resource_versions",
    metadata,
    Column("resource_type", String(TYPE_LENGTH), nullable=False),
    Column("id", String(ID_LENGTH), nullable=False),
    Column("version_id", Integer, nullable=False),
    Column("last_updated", UTCDateTime(), nullable=False),
    # "POST" for the version a create wrote, "PUT" for updates (history's request.method).
    Column("method", String(8), nullable=False),
    Column("content", Text, nullable=False),
    PrimaryKeyConstraint("resource_type", "id", "version_id"),
)

fhir_search_tokens = Table(
    "fhir_search_tokens",
    metadata,
    Column("resource_type", String(TYPE_LENGTH), nullable=False),
    Column("resource_id", String(ID_LENGTH), nullable=False),
    Column("param", String(64), nullable=False),
    # "" when the value has no system (a plain code): NULL cannot be part of a key.
    Column("system", String(TOKEN_LENGTH), nullable=False),
    Column("code", String(TOKEN_LENGTH), nullable=False),
    PrimaryKeyConstraint("resource_type", "resource_id", "param", "system", "code"),
    # Lookup indexes end with resource_id so they cover their queries (migration 0015).
    Index(
        "ix_fhir_search_tokens_lookup", "resource_type", "param", "code", "system", "resource_id"
    ),
)

fhir_search_strings = Table(
    "fhir_search_strings",
    metadata,
    Column("resource_type", String(TYPE_LENGTH), nullable=False),
    Column("resource_id", String(ID_LENGTH), nullable=False),
    Column("param", String(64), nullable=False),
    # Lower-cased, accents removed: FHIR string search is case- and accent-insensitive.
    Column("value", String(TOKEN_LENGTH), nullable=False),
    PrimaryKeyConstraint("resource_type", "resource_id", "param", "value"),
    Index("ix_fhir_search_strings_lookup", "resource_type", "param", "value", "resource_id"),
)

fhir_search_references = Table(
    "fhir_search_references",
    metadata,
    Column("resource_type", String(TYPE_LENGTH), nullable=False),
    Column("resource_id", String(ID_LENGTH), nullable=False),
    Column("param", String(64), nullable=False),
    Column("target_type", String(TYPE_LENGTH), nullable=False),
    Column("target_id", String(ID_LENGTH), nullable=False),
    PrimaryKeyConstraint("resource_type", "resource_id", "param", "target_type", "target_id"),
    Index(
        "ix_fhir_search_references_lookup",
        "target_type",
        "target_id",
        "resource_type",
        "param",
        "resource_id",
    ),
)

fhir_search_dates = Table(
    "fhir_search_dates",
    metadata,
    Column("resource_type", String(TYPE_LENGTH), nullable=False),
    Column("resource_id", String(ID_LENGTH), nullable=False),
    Column("param", String(64), nullable=False),
    # The value as a half-open UTC interval [low, high): a date is its whole day.
    Column("low", UTCDateTime(), nullable=False),
    Column("high", UTCDateTime(), nullable=False),
    PrimaryKeyConstraint("resource_type", "resource_id", "param", "low", "high"),
    Index("ix_fhir_search_dates_lookup", "resource_type", "param", "low", "high", "resource_id"),
)

INDEX_TABLES = (fhir_search_tokens, fhir_search_strings, fhir_search_references, fhir_search_dates)

# Delivery of the card to an external FHIR server: one row per transaction Bundle.
OUTBOX_PENDING = "pending"
OUTBOX_DELIVERED = "delivered"
OUTBOX_DEAD = "dead"

card_outbox = Table(
    "card_outbox",
    metadata,
    # Delivery order: rows are attempted oldest first.
    Column("id", Integer, primary_key=True, autoincrement=True),
    # SHA-256 of the Bundle: the same Bundle is queued once, however often it is written.
    Column("dedupe_key", String(64), nullable=False),
    Column("session_id", String(64), nullable=False),
    Column("bundle", Text, nullable=False),
    # pending -> delivered, or pending -> dead (after too many failures); dead -> pending
    # when an administrator retries it.
    Column("status", String(16), nullable=False),
    Column("attempts", Integer, nullable=False),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("next_attempt_at", UTCDateTime(), nullable=False),
    # A worker sending the row holds it until lease_expires_at; another may take it after.
    Column("lease_owner", String(64), nullable=True),
    Column("lease_expires_at", UTCDateTime(), nullable=True),
    Column("last_attempt_at", UTCDateTime(), nullable=True),
    # The upstream's status and the start of its answer, or the network error: no
    # resource content (the Bundle is right there for whoever may read it).
    Column("last_error", String(1000), nullable=True),
    Column("delivered_at", UTCDateTime(), nullable=True),
    UniqueConstraint("dedupe_key", name="uq_card_outbox_dedupe_key"),
    Index("ix_card_outbox_due", "status", "next_attempt_at", "id"),
)
