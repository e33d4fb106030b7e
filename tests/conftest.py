"""Shared pytest fixtures. Each area keeps its fixtures in its own module under
tests/fixtures/ and registers it here with one import line."""
