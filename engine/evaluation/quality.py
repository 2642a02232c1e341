"""Quality of generated speech, judged by the independent evaluation classifier on re-analysed audio.

Each generated clip goes mel -> vocoder -> waveform -> log-Mel from scratch (as any recording would),
then through the evaluation classifier: (a) the fraction recognised as the requested digit, (b) the
Frechet distance between evaluator embeddings of generated clips and of the real test clips, and (c) the
same distance between two halves of the real test set, the floor any generator is measured against.
``evaluate_quality`` is the one implementation: ``tapdiff evaluate`` and every benchmark call it.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Callable, Sequence

import numpy as np
import torch

from ..audio.datasets import FeatureSet, Normaliser, list_items, load_features
from ..audio.features import clip_features
from ..errors import InvalidInput
from ..models.evaluator import EvalClassifier
from ..bundle import Bundle
from ..diffusion.solvers import SamplerSpec
from ..storage.config import DataRegime, FeatureConfig
from .metrics import frechet_distance


@dataclass
class QualityReport:
    model: str
    sampler: str
    steps: int
    nfe: int
    guidance: float
    n_per_digit: int
    recognised: float
    recognised_per_digit: dict
    fd: float
    fd_real_halves: float
    seconds: float  # generation (sampling and vocoding) wall time
    seconds_per_clip: float

    def to_dict(self) -> dict:
        return asdict(self)


def reanalyse(waves: torch.Tensor, sample_rate: int, cfg: FeatureConfig) -> torch.Tensor:
    return torch.stack([clip_features(w.numpy(), sample_rate, cfg)[0] for w in waves])


@torch.no_grad()
def judge(evaluator: EvalClassifier, mels: torch.Tensor, norm: Normaliser) -> tuple[torch.Tensor, np.ndarray]:
    """(predicted digit, embedding) per clip of un-normalised log-Mels."""
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


class QualityJudge:
    """The evaluation classifier of ``evaluator_bundle`` and the real test clips of ``digits`` under
    ``data``, embedded once (they are the reference of every FD)."""

    def __init__(self, evaluator_bundle: Bundle, data: str, digits: Sequence[int], regime: DataRegime = DataRegime()):
        if evaluator_bundle.evaluator is None:
            raise InvalidInput("the judge needs a bundle loaded with need_evaluator=True")
        self.evaluator, self.features = evaluator_bundle.evaluator, evaluator_bundle.features
        self.normaliser, self.digits = evaluator_bundle.normaliser, list(digits)
        test = load_features(list_items(data, "test", tuple(self.digits), regime.speakers), self.features,
                             regime=regime)  # the regime's real test clips: every FD's reference
        pred, self.real_embeddings = judge(self.evaluator, test.mels, self.normaliser)
        self.real_clips = len(test)
        self.real_recognised = float((pred == test.labels).float().mean())  # the ceiling of the recognised fraction
        self.floor = real_halves_fd(self.evaluator, test, self.normaliser)

    def recognition(self, waves: torch.Tensor, labels: Sequence[int], sample_rate: int
                    ) -> tuple[float, dict, np.ndarray]:
        """(recognised fraction, per digit, embeddings) of generated waveforms requested as ``labels``."""
        pred, emb = judge(self.evaluator, reanalyse(waves, sample_rate, self.features), self.normaliser)
        y = torch.tensor(list(labels))
        per = {int(d): float((pred[y == d] == d).float().mean()) for d in y.unique()}
        return float((pred == y).float().mean()), per, emb

    def fd(self, embeddings: np.ndarray) -> float:
        return frechet_distance(embeddings, self.real_embeddings)


def evaluate_quality(engine, judge: QualityJudge, n: int, guidance: float, seed: int = 0,
                     spec: SamplerSpec | None = None, on_generation: Callable | None = None) -> QualityReport:
    """Generate ``n`` clips of each of the judge's digits with ``engine`` under ``spec`` (default: the engine's
    default run) and judge them; the generated clips go to ``on_generation`` (to save them, say) before they are
    judged. The engine is not changed."""
    spec = engine.check_spec(spec) if spec is not None else engine.sampler_spec()
    t0 = time.monotonic()
    out = engine.generate(judge.digits, n=n, guidance=guidance, seed=seed, spec=spec)
    seconds = time.monotonic() - t0
    if on_generation is not None:
        on_generation(out)
    rec, per, emb = judge.recognition(out.waves, out.labels, out.sample_rate)
    return QualityReport(engine.model_name, spec.solver, spec.steps, spec.nfe, guidance, n, rec, per, judge.fd(emb),
                         judge.floor, round(seconds, 2), round(seconds / len(out.labels), 4))


CLASSIFIER_SIGMAS = (0.0, 0.5, 1.0, 2.0, 5.0)


def classifier_accuracy(bundle: Bundle, data: str, digits: Sequence[int] | None, regime: DataRegime,
                        sigmas: Sequence[float] = CLASSIFIER_SIGMAS) -> dict[str, float]:
    """The bundle's frozen classifier on the regime's test clips, x_t = x_0 + sigma n: accuracy per sigma (what
    its taps are worth where it is unsure)."""
    from ..training.classifier import accuracy_by_sigma

    digits = tuple(digits or bundle.config.get("labels", range(10)))
    test = load_features(list_items(data, "test", digits, regime.speakers), bundle.features, regime=regime)
    acc = accuracy_by_sigma(bundle.classifier, bundle.normaliser.normalise(test.mels)[:, None], test.labels,
                            bundle.sde, sigmas=tuple(sigmas))
    return {f"{k:g}": v for k, v in acc.items()}


def student_curve_point(judge: QualityJudge, clips_per_digit: int, guidance: float = 3.0
                        ) -> Callable[[object, str, int], dict]:
    """A training curve's judge of a few-step student: ``point(bundle folder, model, steps)`` samples
    ``clips_per_digit`` clips of each digit (seed 0, multistep, eager torch) and gives their recognised fraction
    and FD by the standard evaluator."""
    from ..api import Engine

    def point(checkpoint, model: str, steps: int) -> dict:
        engine = Engine(checkpoint, model=model, backend="torch", batch_size=32)
        report = evaluate_quality(engine, judge, clips_per_digit, guidance, seed=0,
                                  spec=engine.sampler_spec("multistep", steps=steps))
        return {"recognised": round(report.recognised, 4), "fd": round(report.fd, 2),
                "eval_clips_per_digit": clips_per_digit}

    return point
