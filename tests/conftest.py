"""Shared pytest configuration. Fixtures live in tests/fixtures/ (one module per kind of resource)."""

pytest_plugins = ["tests.fixtures.s3", "tests.fixtures.models"]
