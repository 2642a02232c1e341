"""A cached graph is verified for identity, not only integrity: a graph (or an optimised graph) copied over another
model's or another variant's, with its manifest or sha256 made to match, is rebuilt instead of run."""
from __future__ import annotations

import json
import shutil

import pytest
import torch

from engine.api import Engine
from engine.diffusion.taps import onehot


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """One artifact cache holding tapdiff's and two-model's graphs (and their optimised graphs)."""
    root = tmp_path_factory.mktemp("cache")
    for model in ("tapdiff", "two-model"):
        Engine(model=model, artifacts=root)
    return root


def _folder(root, model):
    return next(p for p in (root / "score").iterdir() if p.name.startswith(f"{model}-"))


def _engine_matches_eager(root) -> bool:
    engine = Engine(model="tapdiff", artifacts=root)
    g = torch.Generator().manual_seed(0)
    x, sigma = torch.randn(2, 1, *engine.bundle.input_hw, generator=g), torch.tensor([0.5, 3.0])
    oh, gamma = onehot(torch.tensor([3, 7]), 10), torch.tensor([3.0, 3.0])
    with torch.no_grad():
        return torch.allclose(engine.denoiser(x, sigma, oh, gamma), engine.torch_denoiser(x, sigma, oh, gamma),
                              rtol=1e-3, atol=1e-3)


def test_another_models_graph_with_a_matching_manifest_is_rebuilt(cache, tmp_path, caplog):
    root = tmp_path / "c"
    shutil.copytree(cache, root)
    mine, theirs = _folder(root, "tapdiff"), _folder(root, "two-model")
    shutil.copyfile(theirs / "guided_dyn.onnx", mine / "guided_dyn.onnx")
    manifest = json.loads((mine / "guided_dyn.json").read_text())
    manifest["onnx_sha256"] = json.loads((theirs / "guided_dyn.json").read_text())["onnx_sha256"]
    (mine / "guided_dyn.json").write_text(json.dumps(manifest))
    assert _engine_matches_eager(root)
    assert "another graph" in caplog.text


def test_another_models_optimised_graph_with_its_sha256_is_rebuilt(cache, tmp_path, caplog):
    root = tmp_path / "c"
    shutil.copytree(cache, root)
    mine, theirs = _folder(root, "tapdiff") / "ort", _folder(root, "two-model") / "ort"
    for src in theirs.glob("guided_dyn-*.onnx"):
        dst = next(mine.glob("guided_dyn-*.onnx"))
        shutil.copyfile(src, dst)
        shutil.copyfile(src.with_suffix(".sha256"), dst.with_suffix(".sha256"))
    assert _engine_matches_eager(root)
    assert "holds another graph" in caplog.text


def test_guided_and_unguided_graphs_swapped_are_rebuilt_not_a_crash(cache, tmp_path, caplog):
    root = tmp_path / "c"
    shutil.copytree(cache, root)
    mine = _folder(root, "tapdiff")
    for ext in (".onnx", ".json"):
        a, b = mine / f"guided_dyn{ext}", mine / f"unguided_dyn{ext}"
        tmp = mine / f"swap{ext}"
        a.rename(tmp), b.rename(a), tmp.rename(b)
    assert _engine_matches_eager(root)
    engine = Engine(model="tapdiff", artifacts=root)
    out = engine.generate([7], n=1, nfe=2)
    assert torch.isfinite(out.waves).all()
    assert "another graph" in caplog.text
