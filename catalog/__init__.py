"""Catalogue: raw export parsing and cleaning, image verification, storage, demo data."""
