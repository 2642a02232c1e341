"""The score networks a bundle can hold, by the one name used everywhere: ``Engine(model=...)``, and
``--model`` of ``train-score``, ``generate``, ``evaluate`` and the benchmarks. Each entry carries its own
config's default and its own builder."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Callable

from torch import nn

from ..errors import InvalidInput
from ..storage.config import SubnetConfig, UNetConfig
from .score_subnet import ScoreSubnet
from .unet import UNet

Builder = Callable[[object, tuple[int, ...], tuple[int, int]], nn.Module]


@dataclass(frozen=True)
class ScoreNetworkKind:
    name: str
    weights: str  # weights file stem in a bundle; its config is config.json["<weights>_config"]
    config_cls: type
    uses_taps: bool
    description: str
    default: Callable[[], object]  # the network's default config
    builder: Builder  # (config, classifier tap channels, input (n_mels, frames)) -> untrained network F
    teacher: str | None = None  # a distilled student: the model it is distilled from (its config, plus labels)

    @property
    def config_key(self) -> str:
        return f"{self.weights}_config"

    def default_config(self, widths: tuple[int, ...] | None = None):
        cfg = self.default()
        return cfg if widths is None else dataclasses.replace(cfg, widths=widths)

    def build(self, cfg, tap_channels: tuple[int, ...], input_hw: tuple[int, int]) -> nn.Module:
        """The network F of this kind (untrained), for a classifier with ``tap_channels``."""
        if not isinstance(cfg, self.config_cls):
            raise TypeError(f"model {self.name!r} needs a {self.config_cls.__name__}, got {type(cfg).__name__}")
        if getattr(cfg, "use_taps", self.uses_taps) != self.uses_taps:
            raise InvalidInput(f"model {self.name!r} needs SubnetConfig.use_taps={self.uses_taps}")
        return self.builder(cfg, tap_channels, input_hw)


SCORE_NETWORKS = {k.name: k for k in (
    ScoreNetworkKind("tapdiff", "score_subnet", SubnetConfig, True, "ScoreSubnet on the frozen classifier's taps",
                     lambda: SubnetConfig(use_taps=True), ScoreSubnet),
    ScoreNetworkKind("two-model", "unet", UNetConfig, False, "U-Net score network + guidance from the classifier",
                     UNetConfig, lambda cfg, tap_channels, input_hw: UNet(cfg)),
    ScoreNetworkKind("ablation", "score_ablation", SubnetConfig, False, "ScoreSubnet's decoder on x_t only",
                     lambda: SubnetConfig(use_taps=False), ScoreSubnet),
    ScoreNetworkKind("tapdiff-distilled", "score_subnet_distilled", SubnetConfig, True,
                     "ScoreSubnet distilled from guided tapdiff: label and gamma as inputs, few steps",
                     lambda: SubnetConfig(use_taps=True, label_classes=10), ScoreSubnet, teacher="tapdiff"),
    ScoreNetworkKind("two-model-distilled", "unet_distilled", UNetConfig, False,
                     "U-Net distilled from the guided two-model pipeline: no classifier when sampling",
                     lambda: UNetConfig(label_classes=10), lambda cfg, tap_channels, input_hw: UNet(cfg),
                     teacher="two-model"),
)}


def score_network_kind(name: str) -> ScoreNetworkKind:
    if not isinstance(name, str) or name not in SCORE_NETWORKS:
        raise InvalidInput(f"unknown model {name!r}; expected one of {sorted(SCORE_NETWORKS)}")
    return SCORE_NETWORKS[name]
