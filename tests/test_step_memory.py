"""What keeps a score evaluation's memory down: fused attention (no tokens x tokens matrix) and tap
gradients that do not hold on to the guidance cotangent's half of the stacked backward."""
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
