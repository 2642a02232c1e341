"""Rebuild the networks of a checkpoint bundle from its config.json and weights (no training code)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from .audio.datasets import Normaliser
from .errors import CheckpointError
from .models.classifier import NoiseConditionedClassifier
from .models.evaluator import EvalClassifier
from .models.registry import ScoreNetworkKind, score_network_kind
from .storage.checkpoint import SAMPLING_DEFAULTS, STUDENT_SAMPLING_DEFAULTS, load_weights, read_config
from .storage.config import ClassifierConfig, FeatureConfig, SDEConfig, from_dict


@dataclass
class Bundle:
    directory: Path
    config: dict
    features: FeatureConfig
    sde: SDEConfig
    normaliser: Normaliser
    classifier: NoiseConditionedClassifier
    score_net: nn.Module | None = None  # the network F of ``model`` (see engine.models.registry)
    model: str | None = None
    evaluator: EvalClassifier | None = None

    @property
    def labels(self) -> tuple[int, ...]:
        """Digits this bundle generates: the loaded score model's training labels (its data regime), else the
        classifier's."""
        weights = score_network_kind(self.model).weights if self.model else ""
        trained = self.config.get("training", {}).get(weights, {}).get("config", {}).get("labels")
        return tuple(trained if trained else self.config.get("labels", range(self.classifier.cfg.n_classes)))

    @property
    def input_hw(self) -> tuple[int, int]:
        return self.features.n_mels, self.features.frames

    @property
    def sampling(self) -> dict:
        """The loaded model's sampling section (solver, steps, rho, options, vocoder, guidance fade) with
        defaults filled in: ``sampling.models.<model>`` where the bundle has one (a distilled student's own
        solver and budget), else the bundle's ``sampling``; its types were checked when config.json was read."""
        section = dict(self.config.get("sampling", {}))
        per_model = section.pop("models", {})
        if self.model in per_model:
            return {**SAMPLING_DEFAULTS, **per_model[self.model]}
        if self.model and score_network_kind(self.model).teacher:
            return dict(STUDENT_SAMPLING_DEFAULTS)
        return {**SAMPLING_DEFAULTS, **section}

    def weights_sha256(self, name: str) -> str | None:
        """The recorded sha256 of ``name``.safetensors (what caches and exported artifacts key on)."""
        return self.config.get("files", {}).get(f"{name}.safetensors")


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


def has_model(config: dict, name: str) -> bool:
    return score_network_kind(name).config_key in config


DEFAULT_MODEL = "tapdiff"
DISTILLED_DEFAULT = "tapdiff-distilled"  # the default instead, once its sampling entry records that it met the rule


def default_model(config: dict) -> str:
    """The model a bundle generates with unless one is named: tapdiff's distilled student where
    ``sampling.models.tapdiff-distilled.meets_default_rule`` is true (``benchmarks/distill_quality.py --write``
    records it: quality no worse than the 15-evaluation default beyond the seed-to-seed spread), else tapdiff."""
    entry = config.get("sampling", {}).get("models", {}).get(DISTILLED_DEFAULT, {})
    return DISTILLED_DEFAULT if entry.get("meets_default_rule") is True and has_model(config, DISTILLED_DEFAULT) \
        else DEFAULT_MODEL


def load_score_network(bundle: Bundle, kind: ScoreNetworkKind) -> nn.Module:
    """The bundle's trained network of ``kind``, frozen, in eval mode."""
    if kind.config_key not in bundle.config:
        raise CheckpointError(f"{bundle.directory} has no {kind.name} model; train it with "
                              f"`tapdiff train-score --model {kind.name}`")
    net_cfg = _section(bundle.config, kind.config_key, kind.config_cls)
    try:
        net = kind.build(net_cfg, bundle.classifier.tap_channels, bundle.input_hw)
    except (TypeError, ValueError, RuntimeError, IndexError) as e:
        raise CheckpointError(f"config.json section {kind.config_key!r} does not build a network: {e}") from e
    return load_weights(bundle.directory, kind.weights, net, bundle.config).eval().requires_grad_(False)


def load_bundle(directory: str | Path, model: str | None = DEFAULT_MODEL, need_evaluator: bool = False) -> Bundle:
    """Features, SDE, normaliser and frozen classifier of a bundle, plus the score network ``model``
    (None: none) and the evaluation classifier when asked."""
    directory = Path(directory)
    kind = score_network_kind(model) if model is not None else None  # an unknown name fails before any I/O
    cfg = read_config(directory)
    features = _section(cfg, "features", FeatureConfig)
    sde = _section(cfg, "sde", SDEConfig)
    norm = normaliser_from_config(cfg)
    if norm.mean.numel() != features.n_mels:
        raise CheckpointError(f"normaliser has {norm.mean.numel()} bands, features have {features.n_mels}")
    clf = load_weights(directory, "classifier", NoiseConditionedClassifier(_section(cfg, "classifier", ClassifierConfig)), cfg)
    clf.eval().requires_grad_(False)
    bundle = Bundle(directory, cfg, features, sde, norm, clf)
    if kind is not None:
        bundle.score_net, bundle.model = load_score_network(bundle, kind), kind.name
    beyond = [y for y in bundle.labels if y >= clf.cfg.n_classes]
    if beyond:
        raise CheckpointError(f"{directory / 'config.json'}: labels {beyond} are beyond the classifier's "
                              f"{clf.cfg.n_classes} classes")
    if need_evaluator:
        if "evaluator" not in cfg:
            raise CheckpointError(f"{directory} has no evaluation classifier; run `tapdiff train-evaluator` first")
        try:
            ev = EvalClassifier(**cfg["evaluator"]["arch"])
        except (TypeError, ValueError, RuntimeError) as e:
            raise CheckpointError(f"config.json section 'evaluator.arch' is invalid: {e}") from e
        bundle.evaluator = load_weights(directory, "evaluator", ev, cfg).eval().requires_grad_(False)
    return bundle
