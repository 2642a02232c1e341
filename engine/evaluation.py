"""Quality of generated speech, judged by the independent evaluation classifier on re-analysed audio.

Each generated clip goes mel -> vocoder -> waveform -> log-Mel from scratch (as any recording would),
then through the evaluation classifier: (a) the fraction recognised as the requested digit, (b) the
Frechet distance between evaluator embeddings of generated clips and of the real test clips, and (c) the
same distance between two halves of the real test set, the floor any generator is measured against.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch

from .config import FeatureConfig
from .data import FeatureSet, Normaliser
from .evaluator import EvalClassifier, frechet_distance
from .features import clip_features


@dataclass
class QualityReport:
    n_per_digit: int
    steps: int
    guidance: float
    sampler: str
    recognised: float
    recognised_per_digit: dict
    fd: float
    fd_real_halves: float
    seconds: float

    def to_dict(self) -> dict:
        return asdict(self)


def reanalyse(waves: torch.Tensor, sample_rate: int, cfg: FeatureConfig) -> torch.Tensor:
    return torch.stack([clip_features(w.numpy(), sample_rate, cfg)[0] for w in waves])


@torch.no_grad()
def judge(evaluator: EvalClassifier, mels: torch.Tensor, norm: Normaliser) -> tuple[torch.Tensor, np.ndarray]:
    x = norm.normalise(mels)
    return evaluator(x).argmax(-1), evaluator.embed(x).numpy()


def real_halves_fd(evaluator: EvalClassifier, test: FeatureSet, norm: Normaliser) -> float:
    """FD between two halves of the real test set, split alternately within each digit."""
    _, emb = judge(evaluator, test.mels, norm)
    first = np.zeros(len(test), dtype=bool)
    for y in test.labels.unique():
        idx = np.flatnonzero(test.labels.numpy() == int(y))
        first[idx[::2]] = True
    return frechet_distance(emb[first], emb[~first])


def recognition(evaluator: EvalClassifier, waves: torch.Tensor, labels: list[int], sample_rate: int,
                cfg: FeatureConfig, norm: Normaliser) -> tuple[float, dict, np.ndarray]:
    pred, emb = judge(evaluator, reanalyse(waves, sample_rate, cfg), norm)
    y = torch.tensor(labels)
    per = {int(d): float((pred[y == d] == d).float().mean()) for d in y.unique()}
    return float((pred == y).float().mean()), per, emb
