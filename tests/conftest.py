import pytest
import torch
from hypothesis import settings

settings.register_profile("torchbp", deadline=None, max_examples=40, derandomize=True)
settings.load_profile("torchbp")

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def pytest_collection_modifyitems(config, items):
    skip_cuda = pytest.mark.skip(reason="no CUDA device on this machine")
    for item in items:
        if "cuda" in item.keywords and not torch.cuda.is_available():
            item.add_marker(skip_cuda)


def pytest_configure(config):
    config.addinivalue_line("markers", "cuda: needs a CUDA device; skipped elsewhere")
