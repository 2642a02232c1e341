"""Evaluation classifier: its own architecture, trained on clean FSDD (``engine.training.evaluator``).

It is a 1-D conv net over time with the mel bands as channels, unlike the 2-D noise-conditioned
classifier, so guidance cannot have tuned generated clips to fool it. Its penultimate layer gives the
embeddings for the Frechet distance.
"""
from __future__ import annotations

import torch
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
