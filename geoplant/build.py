"""Temporary: removed at integration (the old name of :mod:`geoplant.builder`)."""
from geoplant.builder import *  # noqa: F403  (temporary: removed at integration)
from geoplant.builder import CHUNK_SURVEYS, LOCK_NAME, build  # noqa: F401  (names tests import)
