"""Train a score network by denoising score matching (EDM weighting) with the classifier frozen.

The loss evaluates the same score model the engine samples with (``engine.diffusion.score_model``),
unguided: for tapdiff one classifier pass gives the taps (without autograd), and gradients flow only
through the score network inside the EDM denoiser.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch

from ..audio.datasets import FeatureSet, Normaliser
from ..diffusion.score_model import GuidedDenoiser, build_score_model
from ..diffusion.sde import loss_weight, perturb, sample_training_sigma
from ..diffusion.taps import TapExtractor
from ..errors import InvalidInput
from ..models.registry import ScoreNetworkKind
from ..bundle import Bundle
from ..storage.checkpoint import load_weights
from ..storage.config import TrainConfig, from_dict
from .loop import EMA, train_loop


def dsm_loss(model: GuidedDenoiser, x0: torch.Tensor, sigma: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """lambda(sigma) * ||D(x0 + sigma n; sigma) - x0||^2, mean over batch and elements."""
    err = (model(perturb(x0, sigma, noise), sigma) - x0) ** 2
    return (loss_weight(sigma, model.extractor.sde) * err.mean(dim=(1, 2, 3))).mean()


def _distributed(net: torch.nn.Module) -> torch.nn.Module:
    """``net`` in DistributedDataParallel under torch.distributed (gradients averaged over ranks), else as is.
    Every rank starts from rank 0's weights (DDP broadcasts them)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        return net
    from torch.nn.parallel import DistributedDataParallel

    ddp = DistributedDataParallel(net)
    ddp.uses_taps = net.uses_taps  # what the score-model factory asks of a network
    return ddp


def train_score(train: FeatureSet, norm: Normaliser, extractor: TapExtractor, kind: ScoreNetworkKind, net_cfg,
                cfg: TrainConfig, input_hw: tuple[int, int], state_path: Path | None = None, progress: bool = True,
                on_checkpoint: Callable[[EMA, int, float], dict | None] | None = None,
                checkpoint_every_s: float = 120.0, init: Callable[[torch.nn.Module], object] | None = None,
                start: dict | None = None, stretch: dict | None = None) -> tuple[EMA, dict]:
    """DSM training of a network of ``kind`` (config ``net_cfg``); the EMA copy is the result.

    The network is new, or ``init(net)`` loads trained weights into it; ``start`` then says where its
    steps, seconds and learning curve stand (see ``train_loop``)."""
    torch.manual_seed(cfg.seed)
    net = kind.build(net_cfg, extractor.tap_channels, input_hw)
    if init is not None:
        init(net)
    extractor.requires_grad_(False).eval()
    model = build_score_model(extractor, _distributed(net))
    keep = torch.isin(train.labels, torch.tensor(cfg.labels))
    x_all = norm.normalise(train.mels[keep])[:, None]
    if len(x_all) == 0:
        raise InvalidInput(f"no training clips with labels {cfg.labels}")

    def loss_fn(gen: torch.Generator) -> torch.Tensor:
        idx = torch.randint(len(x_all), (cfg.batch_size,), generator=gen)
        sigma = sample_training_sigma(cfg.batch_size, extractor.sde, gen)
        noise = torch.randn(x_all[idx].shape, generator=gen)
        return dsm_loss(model, x_all[idx], sigma, noise)

    return train_loop(net, loss_fn, cfg, state_path, "score", on_checkpoint, checkpoint_every_s, progress, start,
                      stretch)


def continuation(bundle: Bundle, kind: ScoreNetworkKind, widths: tuple[int, ...] | None):
    """(network config, weight loader, start) to continue the bundle's trained ``kind`` network: its config,
    its EMA weights as both the trained and the EMA copy, and its steps, seconds and curve from config.json."""
    cfg = bundle.config
    if kind.config_key not in cfg or kind.weights not in cfg.get("training", {}):
        raise InvalidInput(f"--continue: {bundle.directory} has no trained {kind.weights} to continue")
    net_cfg = from_dict(kind.config_cls, cfg[kind.config_key])
    if widths is not None and tuple(widths) != tuple(net_cfg.widths):
        raise InvalidInput(f"--continue keeps the trained network's widths {list(net_cfg.widths)}; got --widths {list(widths)}")
    before = cfg["training"][kind.weights]

    def init(net):
        load_weights(bundle.directory, kind.weights, net, cfg)

    previous = {k: before.get(k) for k in ("command", "steps", "seconds", "threads", "processes")}
    start = {"step": before["steps"], "elapsed": before["seconds"],
             "log": {"curve": list(before.get("curve", [])),
                     "continues": [*before.get("continues", []), previous]}}
    return net_cfg, init, start
