"""Compile every Triton kernel in this package through the real NVIDIA toolchain, no GPU needed.

``compile_all()`` runs ``triton.compile(ASTSource(...), target=GPUTarget("cuda", arch, 32))`` for each
entry of ``specs()`` (every kernel, in the dtype/constexpr variants the wrappers launch) and returns, per
kernel and arch, what the compiler reports: PTX and cubin sizes, num_warps, num_stages, shared memory
(Triton's metadata), and registers / spill bytes / stack frame from ``ptxas -v`` run on the same PTX with
the ptxas Triton itself uses. Used by ``tests/test_kernels.py`` (PTX and cubin are produced, no spills)
and ``benchmarks/kernel_bench.py`` (the metadata table).

The signatures mirror what the JIT would specialise at a typical launch: pointers 16-byte aligned
(``tt.divisibility``), the unit token stride of channel-major tensors a constexpr 1. Must run WITHOUT
TRITON_INTERPRET (the interpreter replaces the compiler).
"""
from __future__ import annotations

import re
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

ARCHS = (90, 80)


@dataclass(frozen=True)
class KernelSpec:
    name: str  # "kernel [variant]"
    kernel: object  # a triton.JITFunction
    signature: dict[str, str]  # every argument: "*fp32", "i32", "fp32" or "constexpr"
    constexprs: dict[str, object] = field(default_factory=dict)
    num_warps: int = 4
    num_stages: int = 3


def _ptr(dtype: str) -> str:
    return {"fp32": "*fp32", "fp16": "*fp16", "bf16": "*bf16"}[dtype]


def specs() -> list[KernelSpec]:
    """Every kernel in the launch configurations its wrapper uses (the wrappers' LAUNCH tables)."""
    import torch

    from . import attention_triton as ta
    from . import silu_adjoint_triton as sa
    from . import tap_norm_triton as tn

    out: list[KernelSpec] = []
    one, two = tn.ONE_LAUNCH, tn.TWO_LAUNCH
    for dt, torch_dt in (("fp32", torch.float32), ("fp16", torch.float16)):
        p = _ptr(dt)
        for taps in ((1, 2) if dt == "fp32" else (2,)):
            what = "pair" if taps == 2 else "single"
            out.append(KernelSpec(
                f"tap_norm_one_launch [{dt}, {what}, BLOCK={one['block']}]", tn._tap_norm_one_launch_kernel,
                {"f_ptr": p, "g_ptr": p, "out_ptr": p, "log_rms_ptr": p, "n_f": "i32", "n_g": "i32", "eps": "fp32",
                 "NUM_TAPS": "constexpr", "BLOCK": "constexpr"}, {"NUM_TAPS": taps, "BLOCK": one["block"]},
                num_warps=one["num_warps"]))
            out.append(KernelSpec(
                f"tap_sumsq_partials [{dt}, {what}, BLOCK={two['block']}]", tn._tap_sumsq_partials_kernel,
                {"f_ptr": p, "g_ptr": p, "partials_ptr": "*fp32", "n_f": "i32", "n_g": "i32", "chunks": "i32",
                 "NUM_TAPS": "constexpr", "BLOCK": "constexpr"}, {"NUM_TAPS": taps, "BLOCK": two["block"]},
                num_warps=two["num_warps"]))
            # 256 chunks: the full-resolution tap (32 x 80 x 72 = 184,320 elements) in blocks of 1024
            out.append(KernelSpec(
                f"tap_scale [{dt}, {what}, BLOCK={two['block']}, 256 chunks]", tn._tap_scale_kernel,
                {"f_ptr": p, "g_ptr": p, "partials_ptr": "*fp32", "out_ptr": p, "log_rms_ptr": p, "n_f": "i32",
                 "n_g": "i32", "chunks": "i32", "eps": "fp32", "NUM_TAPS": "constexpr", "BLOCK": "constexpr",
                 "CHUNKS_P2": "constexpr"}, {"NUM_TAPS": taps, "BLOCK": two["block"], "CHUNKS_P2": 256},
                num_warps=two["num_warps"]))
        cfg = ta.LAUNCH[torch_dt]
        for dh in (16, 24):  # ScoreSubnet: C=64 and C=96 over 4 heads
            block_d = max(16, 1 << (dh - 1).bit_length())
            sig = {name: p for name in ("q_ptr", "k_ptr", "v_ptr", "pos_ptr", "o_ptr")}
            for t in "qkvo":
                sig.update({f"stride_{t}b": "i32", f"stride_{t}c": "i32", f"stride_{t}n": "constexpr"})
            sig.update({"stride_pc": "i32", "stride_pn": "constexpr", "N": "i32", "HEADS": "i32", "DH": "i32",
                        "qk_scale": "fp32", "BLOCK_M": "constexpr", "BLOCK_N": "constexpr", "BLOCK_D": "constexpr",
                        "PRECISION": "constexpr"})
            sig = {a: sig[a] for a in ta._tap_attention_fwd_kernel.arg_names}  # the kernel's argument order
            const = {f"stride_{t}n": 1 for t in "qkvop"}  # tokens are the unit-stride axis
            const.update(BLOCK_M=cfg["block_m"], BLOCK_N=cfg["block_n"], BLOCK_D=block_d, PRECISION=cfg["precision"])
            out.append(KernelSpec(
                f"tap_attention_fwd [{dt}, dh={dh}->BLOCK_D={block_d}, {cfg['block_m']}x{cfg['block_n']}]",
                ta._tap_attention_fwd_kernel, sig, const, num_warps=cfg["num_warps"], num_stages=cfg["num_stages"]))
        for S, flags in ((2, (True, True, True)), (2, (True, False, False))):  # ResBlock.adjoint's two calls
            what = "+".join(n for n, f in zip(("weight", "scale", "residual"), flags) if f)
            out.append(KernelSpec(
                f"silu_affine_adjoint [{dt}, S={S}, {what}, BLOCK={sa.LAUNCH['block']}]", sa._silu_affine_adjoint_kernel,
                {"x_ptr": p, "t_ptr": p, "w_ptr": p, "scale_ptr": p, "res_ptr": p, "out_ptr": p, "n": "i32", "C": "i32",
                 "HW": "i32", "stride_sb": "i32", "stride_sc": "i32", "S": "constexpr", "HAS_WEIGHT": "constexpr",
                 "HAS_SCALE": "constexpr", "HAS_RESIDUAL": "constexpr", "BLOCK": "constexpr"},
                {"S": S, "HAS_WEIGHT": flags[0], "HAS_SCALE": flags[1], "HAS_RESIDUAL": flags[2],
                 "BLOCK": sa.LAUNCH["block"]}, num_warps=sa.LAUNCH["num_warps"]))
    return out


def _ptxas_report(ptx: str, arch: int) -> dict:
    """Registers, spill stores/loads and stack frame (bytes) from ``ptxas -v`` with Triton's own ptxas."""
    from triton.backends.nvidia.compiler import get_ptxas

    ptxas = get_ptxas(arch).path
    with tempfile.TemporaryDirectory() as d:
        src = Path(d) / "k.ptx"
        src.write_text(ptx)
        sm = f"sm_{arch}a" if arch >= 90 else f"sm_{arch}"
        res = subprocess.run([ptxas, "-v", f"--gpu-name={sm}", str(src), "-o", str(Path(d) / "k.cubin")],
                             capture_output=True, text=True, check=True)
    log = res.stdout + res.stderr
    regs = re.search(r"Used (\d+) registers", log)
    spill = re.search(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads", log)
    return {"registers": int(regs.group(1)) if regs else None,
            "stack_bytes": int(spill.group(1)) if spill else None,
            "spill_store_bytes": int(spill.group(2)) if spill else None,
            "spill_load_bytes": int(spill.group(3)) if spill else None}


def compile_spec(spec: KernelSpec, arch: int) -> dict:
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    names = spec.kernel.arg_names
    attrs = {(names.index(a),): [["tt.divisibility", 16]] for a, t in spec.signature.items() if t.startswith("*")}
    src = ASTSource(fn=spec.kernel, signature=spec.signature, constexprs=spec.constexprs, attrs=attrs)
    compiled = triton.compile(src, target=GPUTarget("cuda", arch, 32),
                              options={"num_warps": spec.num_warps, "num_stages": spec.num_stages})
    md = compiled.metadata
    return {"kernel": spec.name, "arch": f"sm_{arch}", "num_warps": md.num_warps, "num_stages": md.num_stages,
            "shared_bytes": md.shared, "ptx_bytes": len(compiled.asm.get("ptx", "")),
            "cubin_bytes": len(compiled.asm.get("cubin", b"")), "mma": _mma_kind(compiled.asm["ptx"]),
            **_ptxas_report(compiled.asm["ptx"], arch)}


def _mma_kind(ptx: str) -> str:
    """Which matrix instructions the dots became: "wgmma" (Hopper), "mma.sync" (Ampere-style) or "none"
    (no dot, or fp32 "ieee" dots, which are FMA loops)."""
    return "wgmma" if "wgmma.mma_async" in ptx else "mma.sync" if "mma.sync" in ptx else "none"


def compile_all(archs: tuple[int, ...] = ARCHS) -> list[dict]:
    import os

    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        raise RuntimeError("kernels.aot must run without TRITON_INTERPRET: the interpreter replaces the compiler")
    return [compile_spec(spec, arch) for arch in archs for spec in specs()]


if __name__ == "__main__":
    import json
    import sys

    for row in compile_all():
        sys.stdout.write(json.dumps(row) + "\n")
