"""The catalogue database schema (SQLAlchemy Core), shared by SQLite and any server database."""

from __future__ import annotations

from sqlalchemy import Column, Date, Float, ForeignKey, Index, Integer, MetaData, String, Table, Text

SCHEMA_VERSION = 1

metadata = MetaData()

listings = Table(
    "listings",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("title", Text, nullable=False),
    Column("description", Text, nullable=False),
    Column("price", Float, nullable=True),
    Column("category", Text, nullable=False),
    Column("category_levels", Text, nullable=False),  # JSON list of the path's parts
    Column("top_category", String(128), nullable=False, index=True),
    Column("town", String(128), nullable=True),
    Column("county", String(128), nullable=True),
    Column("location", String(256), nullable=False),
    Column("created_at", Date, nullable=True),
    Column("image_ids", Text, nullable=False),  # JSON list, export order
)

images = Table(
    "images",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("listing_id", String(64), ForeignKey("listings.id"), nullable=False),
    Column("path", Text, nullable=False),
    Column("width", Integer, nullable=False),
    Column("height", Integer, nullable=False),
    Column("created_at", Date, nullable=True),
    # Cache key of the cleaning step: source content hash + output size + pipeline version.
    Column("source_key", String(128), nullable=True),
    Column("source_width", Integer, nullable=True),
    Column("source_height", Integer, nullable=True),
)
Index("ix_images_listing_id", images.c.listing_id)

meta = Table(
    "catalog_meta",
    metadata,
    Column("key", String(64), primary_key=True),
    Column("value", Text, nullable=False),
)
