"""The test suite runs from the repository alone (issue 36): the FSDD subset in tests/data/fsdd is a valid FSDD
folder with the official split, ``fsdd_root`` resolves TAPDIFF_FSDD, then ../shared/data/fsdd, then the subset,
and TensorRT's operator matrix ships inside the export package."""
from pathlib import Path

import pytest


def _pyproject() -> dict:
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    return tomllib.loads((ROOT / "pyproject.toml").read_text())

import conftest
from engine.audio.datasets import list_items

ROOT = Path(__file__).resolve().parents[1]


def test_the_subset_is_an_fsdd_folder_with_the_whole_test_split_and_three_training_clips_each():
    sub = conftest.SUBSET_FSDD
    test, train = list_items(sub, "test"), list_items(sub, "train")
    assert (len(train), len(test)) == (150, 250)
    speakers = {"george", "jackson", "nicolas", "theo", "yweweler"}
    for split, items, per in (("test", test, 5), ("train", train, 3)):
        assert {it.speaker for it in items} == speakers, split
        for d in range(10):
            for s in speakers:
                assert sum(it.label == d and it.speaker == s for it in items) == per, (split, d, s)
    assert {int(it.path.stem.split("_")[2]) for it in test} == set(range(5))
    assert {int(it.path.stem.split("_")[2]) for it in train} == {5, 6, 7}
    assert "CC BY-SA 4.0" in (sub / "README.md").read_text()
    assert sum(p.stat().st_size for p in sub.rglob("*") if p.is_file()) < 4_000_000


def test_fsdd_root_prefers_the_environment_then_shared_then_the_subset(monkeypatch, tmp_path):
    monkeypatch.setenv("TAPDIFF_FSDD", str(conftest.SUBSET_FSDD))
    assert conftest.resolve_fsdd() == (conftest.SUBSET_FSDD, "TAPDIFF_FSDD")
    monkeypatch.setenv("TAPDIFF_FSDD", str(tmp_path))  # set but empty: an error, never a silent fallback
    root, why = conftest.resolve_fsdd()
    assert root is None and "no FSDD recordings" in why
    monkeypatch.delenv("TAPDIFF_FSDD")
    monkeypatch.setattr(conftest, "SHARED_FSDD", tmp_path / "absent")
    assert conftest.resolve_fsdd() == (conftest.SUBSET_FSDD, "tests/data/fsdd (subset)")
    monkeypatch.setattr(conftest, "SHARED_FSDD", conftest.SUBSET_FSDD.parent / "fsdd")
    assert conftest.resolve_fsdd()[1] == "../shared/data/fsdd"


def test_full_fsdd_tells_the_subset_from_the_whole_dataset():
    assert conftest._count_recordings(conftest.SUBSET_FSDD) == 400 < conftest.FULL_FSDD_FILES


def test_the_tensorrt_operator_matrix_ships_in_the_export_package(monkeypatch):
    from export import trt_ops

    monkeypatch.delenv("TAPDIFF_TRT_OPERATORS", raising=False)
    assert trt_ops.DEFAULT_MATRIX.resolve().is_relative_to(ROOT / "export")
    m = trt_ops.load_support_matrix()
    assert m.opset_range == (9, 20) and "Conv" in m.supported and len(m.supported) > 100
    notice = (trt_ops.DEFAULT_MATRIX.parent / "NOTICE").read_text()
    assert "Apache License, Version 2.0" in notice and trt_ops.DEFAULT_MATRIX.name in notice
    data = _pyproject()["tool"]["setuptools"]["package-data"]["export"]
    assert "data/*.md" in data and "data/NOTICE" in data
    assert "shared" not in Path(trt_ops.__file__).read_text()


def test_the_markers_are_registered():
    markers = _pyproject()["tool"]["pytest"]["ini_options"]["markers"]
    assert {m.split(":")[0] for m in markers} == {"slow", "browser", "ray", "gpu", "core"}
