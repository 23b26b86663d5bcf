import pytest
import torch

import fastmaml.data.images as images_module


@pytest.fixture(autouse=True)
def _seed_and_threads():
    torch.manual_seed(0)
    yield


@pytest.fixture
def empty_memory_cache():
    """The data readers' in-process cache, emptied around a test that counts decodes or cache hits."""
    images_module._MEMORY.clear()
    yield
    images_module._MEMORY.clear()
