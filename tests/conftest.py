from pathlib import Path

import pytest
import torch

FSDD = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "fsdd"


@pytest.fixture(scope="session")
def fsdd_root() -> Path:
    if not (FSDD / "recordings").is_dir():
        pytest.skip(f"FSDD not found at {FSDD}")
    return FSDD


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
