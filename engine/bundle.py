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
from .unet import UNetConfig
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

    subnet_name: str | None = None

    @property
    def labels(self) -> tuple[int, ...]:
        """Digits this bundle generates: the loaded score model's training labels (its data regime), else the
        classifier's."""
        trained = self.config.get("training", {}).get(self.subnet_name or "", {}).get("config", {}).get("labels")
        return tuple(trained if trained else self.config.get("labels", range(self.classifier.cfg.n_classes)))


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


# Score models a bundle can hold: weights file stem -> (config class, the engine's model name).
SCORE_MODELS = {"score_subnet": (SubnetConfig, "tapdiff"), "score_ablation": (SubnetConfig, "ablation"),
                "unet": (UNetConfig, "two-model")}
MODEL_NAMES = {v[1]: k for k, v in SCORE_MODELS.items()}


def load_score_model(bundle: "Bundle", name: str) -> torch.nn.Module:
    """ScoreSubnet / ablation / U-Net ``name`` of a bundle, frozen, in eval mode."""
    from .train_score import build_score_model

    if name not in SCORE_MODELS:
        raise ValueError(f"unknown score model {name!r}; expected one of {sorted(SCORE_MODELS)}")
    key = f"{name}_config"
    if key not in bundle.config:
        raise CheckpointError(f"{bundle.directory} has no {name} model; train it with `tapdiff train-score`")
    f = bundle.features
    model = build_score_model(_section(bundle.config, key, SCORE_MODELS[name][0]), bundle.sde,
                              bundle.classifier.tap_channels, (f.n_mels, f.frames))
    return load_weights(bundle.directory, name, model, bundle.config).eval().requires_grad_(False)


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
        bundle.subnet = load_score_model(bundle, subnet_name)
        bundle.subnet_name = subnet_name
    if need_evaluator:
        if "evaluator" not in cfg:
            raise CheckpointError(f"{directory} has no evaluation classifier; run `tapdiff train-evaluator` first")
        ev = EvalClassifier(**cfg["evaluator"]["arch"])
        bundle.evaluator = load_weights(directory, "evaluator", ev, cfg).eval().requires_grad_(False)
    return bundle
