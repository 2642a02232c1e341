import pytest
import torch

from engine.models.classifier import NoiseConditionedClassifier
from engine.storage.config import ClassifierConfig, SDEConfig
from engine.diffusion.sde import precondition
from engine.diffusion.taps import TapExtractor, onehot

SDE = SDEConfig(sigma_min=0.005, sigma_max=152.0)


def random_classifier(norm: str) -> NoiseConditionedClassifier:
    clf = NoiseConditionedClassifier(ClassifierConfig(widths=(8, 16, 16, 24), norm=norm, emb_dim=16))
    with torch.no_grad():  # zero-initialised layers would make parts of the check vacuous
        for p in clf.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return clf.eval()


@pytest.mark.parametrize("norm", ["affine", "groupnorm"])
def test_one_backward_tap_extractor_matches_separate_autograd_calls(norm):
    clf = random_classifier(norm)
    tx = TapExtractor(clf, SDE)
    x = torch.randn(3, 1, 80, 72) * 2
    sigma = torch.tensor([0.05, 1.0, 20.0])
    y = torch.tensor([1, 4, 7])
    taps = tx(x, sigma, onehot(y, 10))

    _, _, c_in, c_noise = precondition(sigma, SDE)
    xr = x.clone().requires_grad_(True)
    fp = clf.forward_with_tape(c_in * xr, c_noise, keep_tape=False)
    jem = torch.logsumexp(fp.logits, -1).sum()
    ref = torch.autograd.grad(jem, [xr] + fp.taps, retain_graph=True)
    ref_guid = torch.autograd.grad(torch.log_softmax(fp.logits, -1).gather(1, y[:, None]).sum(), xr)[0]

    def close(a, b):
        return (a - b).abs().max() <= 1e-4 * b.abs().max() + 1e-9

    assert len(taps.features) == len(taps.grads) == 4
    for f, fr in zip(taps.features, fp.taps):
        assert torch.allclose(f, fr.detach(), atol=1e-6)
    for g, gr in zip(taps.grads, ref[1:]):
        assert g.shape == gr.shape and close(g, gr)
    assert close(taps.input_grad, ref[0])
    assert close(taps.class_gradient, ref_guid)
    assert taps.class_gradient.abs().max() > 0 and taps.input_grad.abs().max() > 0


def test_extraction_runs_one_forward_and_one_backward(monkeypatch):
    clf = random_classifier("affine")
    calls = {"forward": 0, "adjoint": 0, "S": []}
    fwd, adj = clf.forward_with_tape, clf.adjoint

    def counting_forward(*a, **k):
        calls["forward"] += 1
        return fwd(*a, **k)

    def counting_adjoint(fp, cot, **kw):
        calls["adjoint"] += 1
        calls["S"].append(cot.shape[0])
        return adj(fp, cot, **kw)

    monkeypatch.setattr(clf, "forward_with_tape", counting_forward)
    monkeypatch.setattr(clf, "adjoint", counting_adjoint)
    tx = TapExtractor(clf, SDE)
    assert torch.is_grad_enabled() and all(p.requires_grad for p in clf.parameters())  # autograd would record
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.shape) or t, lambda t: t):
        taps = tx(torch.randn(2, 1, 80, 72), torch.ones(2), onehot(torch.tensor([0, 1]), 10))
        tx(torch.randn(2, 1, 80, 72), torch.ones(2))
        tx.class_gradient(torch.randn(2, 1, 80, 72), torch.ones(2), onehot(torch.tensor([0, 1]), 10))
    assert calls == {"forward": 3, "adjoint": 3, "S": [2, 1, 1]}
    assert saved == [] and not taps.class_gradient.requires_grad  # the explicit adjoint replaces autograd
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.shape) or t, lambda t: t):
        clf(torch.randn(2, 1, 80, 72), torch.zeros(2))  # the same forward outside the extractor does record
    assert saved


def test_unguided_extraction_has_no_guidance_and_same_taps():
    tx = TapExtractor(random_classifier("affine"), SDE)
    x, s = torch.randn(2, 1, 80, 72), torch.tensor([0.5, 3.0])
    a, b = tx(x, s), tx(x, s, onehot(torch.tensor([2, 3]), 10))
    assert a.class_gradient is None
    for ga, gb in zip(a.grads, b.grads):
        assert torch.allclose(ga, gb, atol=1e-6)
