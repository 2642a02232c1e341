"""Train the evaluation classifier on clean speech (time-shift and small additive-noise augmentation)."""
from __future__ import annotations

import logging

import torch
import torch.nn.functional as F

from ..audio.datasets import shift_in_time
from ..models.evaluator import EvalClassifier
from ..progress import tracked

logger = logging.getLogger(__name__)


def train_eval_classifier(x: torch.Tensor, y: torch.Tensor, spans: torch.Tensor, silence: torch.Tensor,
                          epochs: int = 30, seed: int = 0, progress: bool = False) -> EvalClassifier:
    """Clean-speech training with time-shift and small additive-noise augmentation."""
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    model = EvalClassifier(n_mels=x.shape[1])
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-2)
    steps_per_epoch = max(1, len(x) // 64)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, 2e-3, total_steps=epochs * steps_per_epoch)
    model.train()
    for _ in tracked(range(epochs), logger, "evaluator", unit="epochs", enabled=progress):
        perm = torch.randperm(len(x), generator=gen)
        for i in range(steps_per_epoch):
            idx = perm[i * 64:(i + 1) * 64]
            xb = shift_in_time(x[idx], spans[idx], silence, gen)
            xb = xb + 0.1 * torch.rand(len(idx), 1, 1, generator=gen) * torch.randn(xb.shape, generator=gen)
            loss = F.cross_entropy(model(xb), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    return model.eval()
