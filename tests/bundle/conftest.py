"""Fixtures of the bundle tests."""

from __future__ import annotations

import pytest


@pytest.fixture
def bundle(tiny_bundle):
    """``tiny_run`` exported without the input gate (the session's ``tiny_bundle``). Read-only."""
    return tiny_bundle
