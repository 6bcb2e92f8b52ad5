"""Fixtures of the data tests."""
import numpy as np
import pytest


@pytest.fixture
def gradient16() -> np.ndarray:
    """A 64x48 16-bit ramp using 12 bits, as many detectors store it."""
    return (np.arange(64 * 48, dtype=np.uint16).reshape(64, 48) % 4096).astype(np.uint16)
