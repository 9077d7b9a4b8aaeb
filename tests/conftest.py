"""Shared fixtures live in tests/fixtures/<area>.py, one module per package that owns them."""

pytest_plugins = [
    "tests.fixtures.catalog",
    "tests.fixtures.models",
    "tests.fixtures.postgres",
    "tests.fixtures.ray_cluster",
    "tests.fixtures.search",
]
