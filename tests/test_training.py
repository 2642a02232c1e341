import torch

from engine.classifier import NoiseConditionedClassifier
from engine.config import ClassifierConfig, SDEConfig, SubnetConfig, TrainConfig
from engine.data import FeatureSet, Normaliser
from engine.score_subnet import ScoreSubnet
from engine.taps import TapExtractor
from engine.train_score import dsm_loss, train_score
from engine.training import train_loop

SDE = SDEConfig(sigma_min=0.005, sigma_max=40.0)
TINY_CLF = ClassifierConfig(widths=(8, 8, 16, 16), emb_dim=16)
TINY_SUB = SubnetConfig(widths=(8, 8, 16, 16), emb_dim=16, heads=2)


def tiny_data(n=8):
    g = torch.Generator().manual_seed(0)
    mels = torch.randn(n, 80, 72, generator=g).cumsum(-1) * 0.2 - 6.0  # smooth in time
    return FeatureSet(mels, torch.arange(n) % 10, torch.tensor([[0, 72]] * n))


def test_dsm_loss_falls_when_overfitting_a_few_clips():
    data = tiny_data()
    norm = Normaliser.fit(data.mels)
    clf = NoiseConditionedClassifier(TINY_CLF).eval()
    tx = TapExtractor(clf, SDE)
    x0 = norm.normalise(data.mels)[:, None]
    g = torch.Generator().manual_seed(1)
    sigma, noise = torch.exp(torch.randn(64, generator=g) * 0.5), torch.randn((64, *x0.shape[1:]), generator=g)
    x0r = x0[torch.arange(64) % len(x0)]
    subnet = ScoreSubnet(TINY_SUB, SDE, clf.tap_channels, (80, 72))
    with torch.no_grad():
        before = float(dsm_loss(subnet, tx, x0r, sigma, noise, SDE))
    cfg = TrainConfig(batch_size=8, lr=3e-3, seconds=1e9, max_steps=60, labels=tuple(range(10)))
    ema, log = train_score(data, norm, tx, TINY_SUB, SDE, cfg, (80, 72), clf.tap_channels, progress=False)
    after = float(dsm_loss(ema.model, tx, x0r, sigma, noise, SDE))
    assert log["steps"] == 60
    assert after < 0.7 * before, (before, after)


def test_score_training_leaves_the_classifier_frozen():
    data = tiny_data()
    norm = Normaliser.fit(data.mels)
    clf = NoiseConditionedClassifier(TINY_CLF)
    before = {k: v.clone() for k, v in clf.state_dict().items()}
    cfg = TrainConfig(batch_size=4, seconds=1e9, max_steps=5)
    train_score(data, norm, TapExtractor(clf, SDE), TINY_SUB, SDE, cfg, (80, 72), clf.tap_channels, progress=False)
    assert all(torch.equal(before[k], v) for k, v in clf.state_dict().items())
    assert not any(p.requires_grad for p in clf.parameters())


def test_training_resumes_from_saved_state(tmp_path):
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 1)
    target = torch.randn(64, 4)

    def loss_fn(gen):
        idx = torch.randint(64, (8,), generator=gen)
        return model(target[idx]).pow(2).mean()

    state = tmp_path / "state.pt"
    _, log1 = train_loop(model, loss_fn, TrainConfig(seconds=1e9, max_steps=10), state, "t", progress=False)
    w_after_10 = model.weight.detach().clone()
    model2 = torch.nn.Linear(4, 1)
    model = model2
    _, log2 = train_loop(model2, loss_fn, TrainConfig(seconds=1e9, max_steps=15), state, "t", progress=False)
    assert log1["steps"] == 10 and log2["steps"] == 15
    assert not torch.equal(model2.weight.detach(), w_after_10)  # continued from the restored weights
    assert [p.name for p in tmp_path.iterdir()] == ["state.pt"]  # no temporary file left behind
