"""Rebuild the models of a checkpoint bundle from its config.json and weights."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from .checkpoint import CheckpointError, load_weights, read_config
from .classifier import NoiseConditionedClassifier
from .config import ClassifierConfig, FeatureConfig, SDEConfig, SubnetConfig, from_dict
from .data import Normaliser
from .evaluator import EvalClassifier
from .score_subnet import ScoreSubnet
from .taps import TapExtractor


@dataclass
class Bundle:
    directory: Path
    config: dict
    features: FeatureConfig
    sde: SDEConfig
    normaliser: Normaliser
    classifier: NoiseConditionedClassifier
    subnet: ScoreSubnet | None = None
    evaluator: EvalClassifier | None = None

    @property
    def extractor(self) -> TapExtractor:
        return TapExtractor(self.classifier, self.sde)

    @property
    def labels(self) -> tuple[int, ...]:
        return tuple(self.config.get("labels", range(self.classifier.cfg.n_classes)))


def _section(cfg: dict, key: str, cls):
    try:
        return from_dict(cls, cfg[key])
    except KeyError as e:
        raise CheckpointError(f"config.json has no {key!r} section") from e
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"config.json section {key!r} is invalid: {e}") from e


def normaliser_from_config(cfg: dict) -> Normaliser:
    try:
        mean = torch.tensor(cfg["normaliser"]["mean"], dtype=torch.float32)
        std = torch.tensor(cfg["normaliser"]["std"], dtype=torch.float32)
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"config.json has no valid normaliser statistics: {e}") from e
    if not (torch.isfinite(mean).all() and torch.isfinite(std).all() and (std > 0).all()):
        raise CheckpointError("config.json normaliser statistics hold NaN, inf or non-positive std")
    return Normaliser(mean, std)


def normaliser_to_config(norm: Normaliser) -> dict:
    return {"mean": [round(float(v), 6) for v in norm.mean], "std": [round(float(v), 6) for v in norm.std]}


def load_bundle(directory: str | Path, subnet_name: str = "score_subnet", need_subnet: bool = True,
                need_evaluator: bool = False) -> Bundle:
    directory = Path(directory)
    cfg = read_config(directory)
    features = _section(cfg, "features", FeatureConfig)
    sde = _section(cfg, "sde", SDEConfig)
    norm = normaliser_from_config(cfg)
    if norm.mean.numel() != features.n_mels:
        raise CheckpointError(f"normaliser has {norm.mean.numel()} bands, features have {features.n_mels}")
    clf = load_weights(directory, "classifier", NoiseConditionedClassifier(_section(cfg, "classifier", ClassifierConfig)), cfg)
    clf.eval().requires_grad_(False)
    bundle = Bundle(directory, cfg, features, sde, norm, clf)
    if need_subnet:
        key = f"{subnet_name}_config"
        subnet = ScoreSubnet(_section(cfg, key, SubnetConfig), sde, clf.tap_channels, (features.n_mels, features.frames))
        bundle.subnet = load_weights(directory, subnet_name, subnet, cfg).eval().requires_grad_(False)
    if need_evaluator:
        if "evaluator" not in cfg:
            raise CheckpointError(f"{directory} has no evaluation classifier; run `tapdiff train-evaluator` first")
        ev = EvalClassifier(**cfg["evaluator"]["arch"])
        bundle.evaluator = load_weights(directory, "evaluator", ev, cfg).eval().requires_grad_(False)
    return bundle
