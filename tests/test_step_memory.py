"""What keeps a score evaluation's memory down: fused attention (no tokens x tokens matrix), tap gradients
that do not hold on to the guidance cotangent's half of the stacked backward, a full-resolution adjoint step
that holds one cotangent at a time, and a decoder that reads (and frees) one depth's taps at a time."""
import weakref

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from engine.models.classifier import NoiseConditionedClassifier
from engine.storage.config import ClassifierConfig, SDEConfig
from engine.models.score_subnet import TapAttention
from engine.diffusion.taps import TapExtractor, onehot
from engine.models.unet import SelfAttention


@pytest.mark.parametrize("make", [
    lambda: (TapAttention(32, 48, heads=4, hw=(20, 18)), (torch.randn(3, 32, 20, 18), torch.randn(3, 48, 20, 18))),
    lambda: (SelfAttention(32, heads=4), (torch.randn(3, 32, 10, 9),)),
], ids=["tapdiff-tap-attention", "unet-self-attention"])
def test_attention_is_eligible_for_sdpa_fused_kernel(make):
    """Forcing SDPA's fused (flash) kernel raises "No available kernel" when the per-head tensors are not
    unit-stride, which silently sends the default dispatch to the math path that materialises the matrix."""
    module, args = make()
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.1 * torch.randn_like(p))
        with sdpa_kernel(SDPBackend.MATH):
            reference = module(*args)
        with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
            fused = module(*args)
    assert torch.allclose(fused, reference, rtol=1e-4, atol=1e-5)


def test_tap_gradients_own_their_memory():
    clf = NoiseConditionedClassifier(ClassifierConfig(widths=(8, 16, 16, 24), emb_dim=16)).eval()
    x, s, y = torch.randn(2, 1, 80, 72), torch.tensor([0.5, 3.0]), torch.tensor([1, 4])
    with torch.no_grad():
        guided, unguided = TapExtractor(clf, SDEConfig())(x, s, onehot(y, 10)), TapExtractor(clf, SDEConfig())(x, s)
    for g, u in zip(guided.grads, unguided.grads):
        assert g.untyped_storage().nbytes() == g.numel() * g.element_size()  # not a view of the (2, ...) stack
        assert torch.allclose(g, u, rtol=1e-5, atol=1e-9)


class OutputShapes(torch.utils._python_dispatch.TorchDispatchMode):
    """Records the shape of every op output made while active."""

    def __init__(self):
        super().__init__()
        self.shapes = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        self.shapes += [tuple(t.shape) for t in torch.utils._pytree.tree_flatten(out)[0] if isinstance(t, torch.Tensor)]
        return out


def test_full_resolution_adjoint_step_holds_one_cotangent_at_a_time():
    clf = NoiseConditionedClassifier(ClassifierConfig(widths=(8, 16, 16, 24), emb_dim=16)).eval()
    with torch.no_grad():
        for p in clf.parameters():
            p.add_(0.1 * torch.randn_like(p))
    x, s, y = torch.randn(3, 1, 80, 72), torch.tensor([0.5, 3.0, 9.0]), torch.tensor([1, 4, 7])
    with torch.no_grad(), OutputShapes() as seen:
        taps = TapExtractor(clf, SDEConfig())(x, s, onehot(y, 10))
    full = (8, 80, 72)  # the stem's channels at full resolution
    assert (3, *full) in seen.shapes  # the step ran, per cotangent
    assert (2, 3, *full) not in seen.shapes and (6, *full) not in seen.shapes  # never both cotangents at once
    assert taps.class_gradient.abs().max() > 0


def test_decoder_frees_each_depths_taps_before_its_blocks_run(tiny_checkpoint):
    from engine.bundle import load_bundle
    from engine.diffusion.score_model import score_model

    model = score_model(load_bundle(tiny_checkpoint, model="tapdiff"))
    net = model.denoiser.net
    x, sigma = torch.randn(2, 1, *net.hws[0]), torch.tensor([0.3, 4.0])
    with torch.no_grad():
        taps = model.extractor(x, sigma)
    depths = len(taps.features)
    held = [(weakref.ref(f), weakref.ref(g)) for f, g in zip(taps.features, taps.grads)]
    alive_at_block = {}

    def check(d):
        def hook(module, args):
            alive_at_block[d] = [held[k][0]() is not None and held[k][1]() is not None for k in range(depths)]
        return hook

    handles = [net.blocks[d].register_forward_pre_hook(check(d)) for d in range(depths)]
    try:
        with torch.no_grad():
            model.denoiser(x, sigma, taps)
    finally:
        for h in handles:
            h.remove()
    for d in range(depths):  # coarsest first: depth d's taps are gone by its blocks, finer depths' still there
        assert alive_at_block[d] == [k < d for k in range(depths)], (d, alive_at_block[d])
    with pytest.raises(RuntimeError, match="already taken"):
        taps.take(0)


def test_tap_scales_are_every_taps_log_rms_in_the_embedding_order(tiny_checkpoint):
    from engine.bundle import load_bundle
    from engine.diffusion.score_model import score_model
    from kernels import tap_pair_norm_reference, tap_rms_norm_reference

    model = score_model(load_bundle(tiny_checkpoint, model="tapdiff"))
    x, sigma = torch.randn(2, 1, *model.denoiser.net.hws[0]), torch.tensor([0.3, 4.0])
    with torch.no_grad():
        taps = model.extractor(x, sigma)
        expected = []
        for d, (f, g) in enumerate(zip(taps.features, taps.grads)):
            expected.append(tap_pair_norm_reference(f, g)[1])
            if d == 0:
                expected.append(tap_rms_norm_reference(taps.input_grad)[1][:, None])
        assert torch.equal(model.denoiser.net._tap_statistics(taps)[1], torch.cat(expected, dim=1))
