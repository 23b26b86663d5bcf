import pytest
import torch

import fastmaml.data.images as images_module


@pytest.fixture(autouse=True)
def _seed_and_threads():
    """Seed torch; restore its thread count afterwards (the CLI sets it from ``threads=``)."""
    torch.manual_seed(0)
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def empty_memory_cache():
    """The data readers' in-process cache, emptied around a test that counts decodes or cache hits."""
    images_module._MEMORY.clear()
    yield
    images_module._MEMORY.clear()
