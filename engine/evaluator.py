"""Evaluation classifier (its own architecture, trained on clean FSDD) and the quality metrics.

It is a 1-D conv net over time with the mel bands as channels, unlike the 2-D noise-conditioned
classifier, so guidance cannot have tuned generated clips to fool it. Its penultimate layer gives the
embeddings for the Frechet distance.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


class EvalClassifier(nn.Module):
    def __init__(self, n_mels: int = 80, width: int = 128, emb_dim: int = 128, n_classes: int = 10):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv1d(n_mels, width, 5, padding=2), nn.BatchNorm1d(width), nn.ReLU(),
            nn.Conv1d(width, width, 5, padding=2, stride=2), nn.BatchNorm1d(width), nn.ReLU(),
            nn.Conv1d(width, width, 3, padding=1), nn.BatchNorm1d(width), nn.ReLU(),
            nn.Conv1d(width, emb_dim, 3, padding=1, stride=2), nn.BatchNorm1d(emb_dim), nn.ReLU(),
        )
        self.dropout = nn.Dropout(0.3)
        self.head = nn.Linear(2 * emb_dim, n_classes)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """(B, n_mels, T) normalised log-Mel -> (B, 2 * emb_dim): mean- and max-pooled over time."""
        h = self.net(x)
        return torch.cat([h.mean(-1), h.amax(-1)], dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.dropout(self.embed(x)))


def train_eval_classifier(x: torch.Tensor, y: torch.Tensor, spans: torch.Tensor, silence: torch.Tensor,
                          epochs: int = 30, seed: int = 0, progress: bool = False) -> EvalClassifier:
    """Clean-speech training with time-shift and small additive-noise augmentation."""
    from tqdm import tqdm

    from .data import shift_in_time

    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    model = EvalClassifier(n_mels=x.shape[1])
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-2)
    steps_per_epoch = max(1, len(x) // 64)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, 2e-3, total_steps=epochs * steps_per_epoch)
    model.train()
    for _ in tqdm(range(epochs), desc="evaluator", disable=None if progress else True):
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


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Frechet distance between Gaussians fitted to two embedding sets (rows are samples).

    tr sqrt(S1 S2) is computed as sum sqrt(eig(S1^1/2 S2 S1^1/2)), a symmetric PSD form that stays real
    and stable when the covariances are rank-deficient (fewer samples than embedding dimensions).
    """
    mu1, mu2 = a.mean(0), b.mean(0)
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    w, v = np.linalg.eigh(s1)
    root1 = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    tr_covmean = np.sqrt(np.clip(np.linalg.eigvalsh(root1 @ s2 @ root1), 0, None)).sum()
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * tr_covmean)
