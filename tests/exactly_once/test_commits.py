"""Exactly once: a backfill killed right before and right after each commit, then rerun (conftest.py)."""
from __future__ import annotations

import pytest

from tests.exactly_once.conftest import COMMITS

pytestmark = pytest.mark.flow


@pytest.mark.parametrize("point", COMMITS)
def test_killed_at_each_commit_the_rerun_equals_an_uninterrupted_run(point, killed_then_rerun):
    killed_then_rerun(point)
