"""A clip's score evaluation is bitwise the same in any batch: what makes the engine's answers independent of what
was batched with them without padding (``kernels.rowwise``, ``backends.batch_invariant_by_construction``)."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from hypothesis import HealthCheck, given, settings, strategies as st

from engine.backends import build_artifacts, score_backend
from engine.bundle import load_bundle
from engine.diffusion.score_model import score_model
from engine.diffusion.taps import onehot
from engine.storage.checkpoint import DEFAULT_CHECKPOINT
from kernels.rowwise import per_row, row_linear

from batch_invariance import onnx_batch_dependent_nodes, torch_batch_dependent_modules

MODELS = ("tapdiff", "two-model", "tapdiff-distilled", "two-model-distilled")


@pytest.fixture(scope="module")
def shipped(tmp_path_factory):
    """model -> (bundle, eager score model, onnxruntime denoiser, its graphs), exported once per module."""
    cache = tmp_path_factory.mktemp("graphs")
    out = {}
    for name in MODELS:
        bundle = load_bundle(DEFAULT_CHECKPOINT, model=name)
        model = score_model(bundle)
        graphs, _ = build_artifacts("onnxruntime", model, bundle, torch.device("cpu"), cache, max_batch=64)
        out[name] = (bundle, model, score_backend("onnxruntime", model, bundle, torch.device("cpu"), cache,
                                                  max_batch=64), graphs)
    return out


def _inputs(bundle, rows: int, seed: int, sigma=None):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, 1, *bundle.input_hw, generator=g) * 3
    sig = torch.exp(torch.empty(rows).uniform_(np.log(bundle.sde.sigma_min), np.log(bundle.sde.sigma_max), generator=g)) \
        if sigma is None else torch.full((rows,), float(sigma))
    oh = onehot(torch.randint(10, (rows,), generator=g), 10)
    gamma = torch.rand(rows, generator=g) * 6
    return x, sig, oh, gamma


@pytest.mark.core
def test_row_forms_equal_their_plain_ops_to_rounding():
    x, w, b = torch.randn(5, 7), torch.randn(3, 7), torch.randn(3)
    torch.testing.assert_close(row_linear(x, w, b), torch.nn.functional.linear(x, w, b), rtol=1e-6, atol=1e-6)
    s = torch.rand(9) + 0.01
    torch.testing.assert_close(per_row(torch.log, s), torch.log(s), rtol=1e-6, atol=0)
    # a row's result is the same alone and among others, bit for bit
    many = torch.randn(37, 7)
    assert torch.equal(row_linear(many, w, b)[5:6], row_linear(many[5:6], w, b))
    assert torch.equal(per_row(torch.sin, many)[5:6], per_row(torch.sin, many[5:6]))


@pytest.mark.parametrize("name", MODELS)
def test_no_onnx_node_depends_on_the_batch(shipped, name):
    """Op by op, in onnxruntime as the engine runs it (every optimisation on): no node's rows change with the batch
    size, guided and unguided, at a low and a high noise level."""
    bundle, _, _, graphs = shipped[name]
    for (guided, _), path in graphs.items():
        for sigma in (0.05, 40.0):
            x, sig, oh, gamma = _inputs(bundle, 16, 0, sigma)
            names = [i.name for i in onnx.load(str(path), load_external_data=False).graph.input]
            feeds = dict(zip(names, [t.numpy() for t in (x, sig, oh, gamma)]))  # x_t, sigma[, onehot, gamma]
            roots = onnx_batch_dependent_nodes(path, feeds, sizes=(1, 3, 5))
            assert roots == [], f"{name} {'guided' if guided else 'unguided'} sigma {sigma}: {roots[:5]}"


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(name=st.sampled_from(MODELS), rows=st.integers(1, 64), data=st.data(), guided=st.booleans(),
       seed=st.integers(0, 2**16))
def test_every_row_equals_its_batch_of_one(shipped, name, rows, data, guided, seed):
    """The property the server's determinism rests on: random batch size, position, noise levels, labels and
    gammas; each probed row of the batch is bitwise its own batch-1 evaluation (onnxruntime, the default
    backend on a CPU)."""
    bundle, _, denoiser, _ = shipped[name]
    x, sig, oh, gamma = _inputs(bundle, rows, seed)
    cond = (oh, gamma) if guided else ()
    with torch.no_grad():
        full = denoiser(x, sig, *cond)
        for p in sorted({0, rows - 1, data.draw(st.integers(0, rows - 1))}):
            alone = denoiser(x[p:p + 1], sig[p:p + 1], *[c[p:p + 1] for c in cond])
            assert torch.equal(full[p:p + 1], alone), f"{name} row {p} of {rows}"


@pytest.mark.core
def test_the_probe_names_a_batch_dependent_op():
    """The module probe finds a GEMM-backed layer (nn.Linear) whose rows change with the batch size, and passes
    its row-invariant replacement."""
    torch.manual_seed(0)
    plain = torch.nn.Sequential(torch.nn.Linear(64, 192))
    from engine.models.blocks import RowLinear

    invariant = torch.nn.Sequential(RowLinear(64, 192))
    invariant.load_state_dict(plain.state_dict())
    x = torch.randn(32, 64)
    assert torch_batch_dependent_modules(invariant, (x,), sizes=(1, 3, 5)) == []
    found = torch_batch_dependent_modules(plain, (x,), sizes=(1, 3, 5))
    if not found:
        pytest.skip("this CPU's GEMM happens to give these rows the same bits at every batch size")
    assert {name for _, name in found} == {"0"}


def test_engine_bytes_do_not_depend_on_the_batch(tmp_path):
    """Through the Engine (onnxruntime, no padding): a request's clips alone and batched with another request's
    give the same log-Mels and waveforms, bit for bit."""
    from engine.api import Clip, Engine

    engine = Engine(batch_size=8, artifacts=tmp_path)
    assert engine.batch_invariant and not engine.pads_batches
    spec = engine.sampler_spec(nfe=2)
    mine = [Clip(7, 3.0, 5, 0)]
    others = [Clip(3, 1.5, 9, 0), Clip(None, 0.0, 2, 1), Clip(1, 3.0, 4, 2)]
    alone = engine.sample_clips(mine, spec)
    batched = engine.sample_clips(others[:2] + mine + others[2:], spec)
    assert torch.equal(alone[0], batched[2])
    a, b = engine.finish([7], alone), engine.finish([3, None, 7, 1], batched)
    assert torch.equal(a.waves[0], b.waves[2])


def test_the_cli_writes_the_bytes_the_api_gives_the_same_request_batched_with_others(tmp_path):
    """The same request (digit 7, seed 5, 2 evaluations) through the CLI alone and through the API inside a larger
    batch: the same WAV bytes (onnxruntime, the default backend, one thread each)."""
    import os
    import subprocess
    import sys

    from engine.api import Clip, Engine
    from engine.audio.wav import wav_bytes

    env = {**os.environ, "OMP_NUM_THREADS": "1", "TAPDIFF_CACHE": str(tmp_path / "cache")}
    run = subprocess.run([sys.executable, "-m", "engine.cli", "generate", "--digit", "7", "--seed", "5", "--nfe", "2",
                          "--out", str(tmp_path / "cli"), "--quiet"], capture_output=True, text=True, env=env,
                         timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the CLI's thread count: the same kernels
    try:
        engine = Engine(batch_size=8, artifacts=tmp_path / "cache")
        spec = engine.sampler_spec(nfe=2)
        clips = [Clip(3, 3.0, 1, 0), Clip(7, 3.0, 5, 0), Clip(None, 0.0, 9, 4)]
        out = engine.finish([c.label for c in clips], engine.sample_clips(clips, spec))
    finally:
        torch.set_num_threads(threads)
    assert (tmp_path / "cli" / "7_0.wav").read_bytes() == wav_bytes(out.waves[1].numpy(), out.sample_rate)
