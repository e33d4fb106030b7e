"""Shared pytest fixtures. Each area keeps its fixtures in its own module under
tests/fixtures/ and registers it here with one import line."""
from tests.fixtures.training import *  # noqa: F401,F403
from tests.fixtures.kafka import *  # noqa: F401,F403
from tests.fixtures.videomamba import *  # noqa: F401,F403
from tests.fixtures.media import *  # noqa: F401,F403
