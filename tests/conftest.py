import os
import tempfile

# Applies the Detectron2 compatibility layer before any test imports detectron2.
import mask2former  # noqa: F401
import pytest
import torch

# Tests must not read or fill the user's record of validated datasets (mask2former/data/custom.py).
os.environ.setdefault("MASK2FORMER_CACHE", tempfile.mkdtemp(prefix="mask2former-test-cache-"))

torch.set_num_threads(int(os.environ.get("MASK2FORMER_TEST_THREADS", "2")))

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TEST_DATA = os.path.join(REPO_ROOT, "tests", "data")


def pytest_collection_modifyitems(config, items):
    if not torch.cuda.is_available():
        skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU")
        for item in items:
            if "gpu" in item.keywords:
                item.add_marker(skip_gpu)
