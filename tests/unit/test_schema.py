"""The schema agrees with the attribute catalogue, and the migrations agree with the schema."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from pacs.dicom.attributes import ATTRIBUTES, Match
from pacs.index.engine import make_engine, migrate
from pacs.index.schema import TABLES, metadata


def test_every_catalogue_attribute_has_its_column() -> None:
    for attr in ATTRIBUTES:
        if attr.keyword == "ModalitiesInStudy":
            continue  # computed per query from the series table
        table = TABLES[attr.level]
        assert attr.column in table.c, f"{attr.keyword} has no column in {table.name}"
        if attr.match is Match.PN:
            assert attr.column + "_key" in table.c


def test_migrations_match_the_schema(db_url: str) -> None:
    engine = make_engine(db_url)
    try:
        migrate(engine)
        migrate(engine)  # idempotent
        with engine.connect() as conn:
            diff = compare_metadata(MigrationContext.configure(conn), metadata)
        assert diff == [], f"schema.py and the Alembic migrations differ: {diff}"
    finally:
        engine.dispose()
