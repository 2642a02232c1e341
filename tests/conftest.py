import os
from pathlib import Path

import pytest
import torch

# The Free Spoken Digit Dataset: TAPDIFF_FSDD if set, else the whole dataset beside the repository
# (../shared/data/fsdd, as this project's machines lay it out), else the fixed subset in the repository
# (tests/data/fsdd: the whole test split and 3 training clips per digit and speaker; see its README).
SHARED_FSDD = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "fsdd"
SUBSET_FSDD = Path(__file__).resolve().parent / "data" / "fsdd"
FULL_FSDD_FILES = 2500  # 10 digits x 5 speakers x 50 recordings (the copy this project's numbers come from)


def _has_recordings(root: Path) -> bool:
    return (root / "recordings").is_dir() or any(root.glob("[0-9]_*_*.wav"))


def resolve_fsdd() -> tuple[Path | None, str]:
    """(the FSDD folder the tests use, where it came from); (None, reason) when TAPDIFF_FSDD names no FSDD."""
    env = os.environ.get("TAPDIFF_FSDD")
    if env:
        root = Path(env).expanduser().resolve()
        if not _has_recordings(root):
            return None, f"TAPDIFF_FSDD={env} holds no FSDD recordings"
        return root, "TAPDIFF_FSDD"
    if _has_recordings(SHARED_FSDD):
        return SHARED_FSDD, "../shared/data/fsdd"
    return SUBSET_FSDD, "tests/data/fsdd (subset)"


def _count_recordings(root: Path) -> int:
    d = root / "recordings" if (root / "recordings").is_dir() else root
    return sum(1 for p in d.glob("[0-9]_*_*.wav"))

# GPU-only tests are collected where a GPU is, and not at all elsewhere (so CI, CPU-only, skips none).
collect_ignore = [] if torch.cuda.is_available() else ["gpu"]


def pytest_report_header(config):
    root, origin = resolve_fsdd()
    return f"FSDD: {root or '-'} ({origin}; {_count_recordings(root) if root else 0} recordings)"


@pytest.fixture(scope="session")
def fsdd_root() -> Path:
    """An FSDD folder: the whole dataset where there is one, else the subset in tests/data/fsdd. Tests that
    depend on the whole dataset's counts take ``full_fsdd`` instead."""
    root, origin = resolve_fsdd()
    if root is None:
        pytest.fail(origin)  # a wrong TAPDIFF_FSDD is an error, not a reason to skip ~160 tests quietly
    return root


@pytest.fixture(scope="session")
def full_fsdd(fsdd_root) -> Path:
    """The whole FSDD (2,500 recordings: 2,250 training, 250 test); skips on the subset."""
    n = _count_recordings(fsdd_root)
    if n < FULL_FSDD_FILES:
        pytest.skip(f"needs the whole FSDD ({FULL_FSDD_FILES} recordings); {fsdd_root} holds {n} "
                    "(set TAPDIFF_FSDD to a full copy, or put one at ../shared/data/fsdd)")
    return fsdd_root


@pytest.fixture(autouse=True, scope="session")
def _artifact_cache(tmp_path_factory):
    """Exported graphs of the tests go to a folder of the test session, never to the user's cache (subprocesses
    inherit it through the environment)."""
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
    assert main(["train-classifier", "--out", str(out), "--seconds", "60", "--max-steps", "60", "--digit", "1,7", *tiny,
                 *data]) == 0
    assert main(["train-score", "--checkpoint", str(out), "--seconds", "60", "--max-steps", "25", "--heldout-clips", "0",
                 *tiny, *data]) == 0
    assert main(["train-evaluator", "--checkpoint", str(out), "--epochs", "1", *data]) == 0
    return out


@pytest.fixture(scope="session")
def tiny_with_baselines(tiny_checkpoint, fsdd_root):
    """The tiny checkpoint plus a U-Net (two-model baseline) and the x_t-only ablation, trained briefly."""
    from engine.cli import main

    data, ck = ["--data", str(fsdd_root)], ["--checkpoint", str(tiny_checkpoint), "--seconds", "60", "--max-steps", "20",
                                         "--heldout-clips", "0"]
    assert main(["train-score", *ck, "--model", "two-model", "--widths", "8,8,16,16", *data]) == 0
    assert main(["train-score", *ck, "--model", "ablation", "--widths", "8,8,16,16", *data]) == 0
    return tiny_checkpoint


# Tiers: whole modules by what they cost or need, less their cheap tests of core behaviour (marked ``core``), and
# single costly tests of other modules (marked ``slow`` themselves). ``pytest -m "not slow"`` is the quick tier for
# the edit-test loop; the browser and Ray modules are slow too; the README's command runs everything.
SLOW_MODULES = {"test_concurrency", "test_faults", "test_serve", "test_output_folder", "test_distill",
                "test_width_sweep", "test_learning_curve", "test_quality_table", "test_choose_sampling",
                "test_hardening", "test_serve_replicas",
                "test_batch_invariance", "test_serve_page"}
MODULE_MARKERS = {"test_serve_page": "browser", "test_serve_replicas": "ray"}


def pytest_collection_modifyitems(config, items):
    for item in items:
        module = item.path.stem
        if module in SLOW_MODULES and item.get_closest_marker("core") is None:
            item.add_marker(pytest.mark.slow)
        if module in MODULE_MARKERS:
            item.add_marker(getattr(pytest.mark, MODULE_MARKERS[module]))
        if "gpu" in item.path.parts:
            item.add_marker(pytest.mark.gpu)
