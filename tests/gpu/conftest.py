"""The GPU tests: collected by ``python -m pytest tests`` only where CUDA is available (``tests/conftest.py``); named
explicitly (``python -m pytest tests/gpu``) on a machine without CUDA, every one of them is skipped with the reason.
``python benchmarks/gpu_kit.py --out DIR`` runs them with the GPU timing into one results file (docs/gpu.md)."""
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: tolerances, gpu_checks

from gpu_checks import NO_CUDA  # noqa: E402

HERE = Path(__file__).resolve().parent


def pytest_collection_modifyitems(config, items):
    for item in items:
        if HERE in Path(item.path).resolve().parents:
            item.add_marker(pytest.mark.gpu)
            if not torch.cuda.is_available():
                item.add_marker(pytest.mark.skip(reason=NO_CUDA))


@pytest.fixture(scope="module")
def engines():
    """Engines of the shipped checkpoint, built once per module: ``engines(device, backend="torch",
    model="tapdiff", capture=True)``."""
    from engine import Engine

    made = {}

    def get(device: str, backend: str = "torch", model: str = "tapdiff", capture: bool = True):
        key = (device, backend, model, capture)
        if key not in made:
            made[key] = Engine(model=model, device=device, backend=backend, capture=capture)
        return made[key]

    return get


@pytest.fixture
def no_tf32():
    """fp32 comparisons with TF32 off for cuBLAS and cuDNN (restored after the test)."""
    from gpu_checks import tf32

    with tf32(False):
        yield
