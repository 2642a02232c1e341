from pathlib import Path

import pytest
import torch

FSDD = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "fsdd"

# GPU-only tests are collected where a GPU is, and not at all elsewhere (so CI, CPU-only, skips none).
collect_ignore = [] if torch.cuda.is_available() else ["gpu"]


@pytest.fixture(scope="session")
def fsdd_root() -> Path:
    if not (FSDD / "recordings").is_dir():
        pytest.skip(f"FSDD not found at {FSDD}")
    return FSDD


@pytest.fixture(autouse=True, scope="session")
def _artifact_cache(tmp_path_factory):
    """Exported graphs of the tests go to a folder of the test session, never to the user's cache (subprocesses
    inherit it through the environment)."""
    import os

    os.environ["TAPDIFF_CACHE"] = str(tmp_path_factory.mktemp("tapdiff_cache"))


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory, fsdd_root):
    """A checkpoint for digits 1 and 7 trained for seconds through the CLI: exercises the whole pipeline."""
    from engine.cli import main

    out = tmp_path_factory.mktemp("tiny")
    data, tiny = ["--data", str(fsdd_root)], ["--widths", "8,8,16,16"]
    assert main(["train-classifier", "--out", str(out), "--seconds", "3", "--labels", "1,7", *tiny, *data]) == 0
    assert main(["train-score", "--checkpoint", str(out), "--seconds", "3", *tiny, *data]) == 0
    assert main(["train-evaluator", "--checkpoint", str(out), "--epochs", "1", *data]) == 0
    return out


@pytest.fixture(scope="session")
def tiny_with_baselines(tiny_checkpoint, fsdd_root):
    """The tiny checkpoint plus a U-Net (two-model baseline) and the x_t-only ablation, trained briefly."""
    from engine.cli import main

    data, ck = ["--data", str(fsdd_root)], ["--checkpoint", str(tiny_checkpoint), "--seconds", "2"]
    assert main(["train-score", *ck, "--model", "two-model", "--widths", "8,8,16,16", *data]) == 0
    assert main(["train-score", *ck, "--model", "ablation", "--widths", "8,8,16,16", *data]) == 0
    return tiny_checkpoint
