"""CLI: every fused kernel against its PyTorch reference over the shapes tapdiff runs, side by side.

    python benchmarks/kernel_bench.py [--threads N] [--batches 1,16] [--quick] [--out benchmarks/results/kernels.md]

Timed with the project's one timer (``engine.evaluation.timing``: interleaved rounds, median and p10-p90; each
sample the mean of back-to-back calls lasting about 1 ms, so caches are warm). On a CUDA GPU: each Triton path
and the reference, in fp32 and fp16, the device synchronised before the clock stops, with achieved GB/s over the minimum traffic (every input
read once, every output written once) and TFLOP/s for attention (4 * B * N^2 * C: QK^T and PV, 2 per MAC).
On CPU: the references only, fp32: outside TRITON_INTERPRET=1
the Triton kernels need a GPU, and interpreter timings measure Python emulation, not the kernel.
Either way it ends with every kernel's compile-time metadata for sm_90 and sm_80 (``kernels.aot``: real
``triton.compile``, no GPU needed): warps, stages, shared memory, registers, spills, matrix instructions.

(Named kernel_bench.py, not kernels.py: a ``kernels`` module in benchmarks/ would shadow the ``kernels``
package for every script here, since a script's own directory comes first on sys.path.)
"""
from __future__ import annotations

import argparse
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from report import emit, header

from engine.evaluation.timing import calls_per_sample, device_sync, interleaved, quantiles

from kernels import (
    silu_affine_adjoint_reference,
    tap_attention_reference,
    tap_pair_norm_reference,
    tap_rms_norm_reference,
)

# (channels, H, W) of the classifier's taps at each depth (ClassifierConfig widths 32, 48, 96, 192 on 80 x 72)
TAPS = [(32, 80, 72), (48, 40, 36), (96, 20, 18), (192, 10, 9)]
# ScoreSubnet's attention depths: (decoder channels, H, W), 4 heads -> dh 16 and 24
ATTENTION = [(64, 20, 18), (96, 10, 9)]
HEADS = 4
# ResBlock stages of the classifier (the adjoint's elementwise tail runs once per block and cotangent stack)
ADJOINT = [(48, 40, 36), (96, 20, 18), (192, 10, 9)]


@dataclass
class Case:
    kernel: str
    shape: str
    dtype: torch.dtype
    impls: dict[str, Callable[[], object]]  # "torch" (the reference) first, then the Triton paths
    bytes: int  # minimum traffic
    flops: int = 0
    note: str = ""


def cases(device: str, dtypes: list[torch.dtype], batches: list[int], with_triton: bool) -> Iterator[Case]:
    """Built lazily: one case's tensors live at a time. ``with_triton`` adds the Triton paths (on CUDA; on CPU
    only under TRITON_INTERPRET=1, to smoke-test this file's GPU branch)."""
    gpu = with_triton
    if gpu:
        from kernels.attention_triton import tap_attention_triton
        from kernels.silu_adjoint_triton import silu_affine_adjoint_triton
        from kernels.tap_norm_triton import (
            SINGLE_LAUNCH_MAX,
            tap_pair_norm_triton,
            tap_rms_norm_triton,
        )
    for dt in dtypes:
        es = torch.finfo(dt).bits // 8
        for B in batches:
            for C, H, W in TAPS:
                f = torch.randn(B, C, H, W, device=device, dtype=dt)
                g = torch.randn(B, C, H, W, device=device, dtype=dt) * 1e-3
                impls = {"torch": lambda f=f, g=g: tap_pair_norm_reference(f, g)}
                note = ""
                if gpu:
                    impls["triton 1 launch"] = lambda f=f, g=g: tap_pair_norm_triton(f, g, single_launch=True)
                    impls["triton 2 launches"] = lambda f=f, g=g: tap_pair_norm_triton(f, g, single_launch=False)
                    note = f"dispatch picks {'1 launch' if 2 * C * H * W <= SINGLE_LAUNCH_MAX else '2 launches'}"
                yield Case("tap_pair_norm", f"B={B} 2x{C}x{H}x{W}", dt, impls, 2 * 2 * B * C * H * W * es, note=note)
            x = torch.randn(B, 1, 80, 72, device=device, dtype=dt)
            impls = {"torch": lambda x=x: tap_rms_norm_reference(x)}
            if gpu:
                impls["triton"] = lambda x=x: tap_rms_norm_triton(x)
            yield Case("tap_rms_norm", f"B={B} 1x80x72", dt, impls, 2 * B * 80 * 72 * es)
            for C, H, W in ATTENTION:
                kv = torch.randn(B, 2 * C, H, W, device=device, dtype=dt)
                k, v = kv.chunk(2, dim=1)
                q = torch.randn(B, C, H, W, device=device, dtype=dt)
                pos = torch.randn(1, C, H, W, device=device, dtype=dt) * 0.1
                impls = {"torch": lambda q=q, k=k, v=v, pos=pos: tap_attention_reference(q, k, v, pos, HEADS)}
                if gpu:
                    impls["triton"] = lambda q=q, k=k, v=v, pos=pos: tap_attention_triton(q, k, v, pos, HEADS)
                N = H * W
                yield Case("tap_attention", f"B={B} C={C} N={N} dh={C // HEADS}", dt, impls,
                           (4 * B * C * N + C * N) * es, flops=4 * B * N * N * C)
            for C, H, W in ADJOINT:
                t = torch.randn(B, C, H, W, device=device, dtype=dt)
                w = torch.randn(C, device=device, dtype=dt)
                scale = torch.randn(B, 2 * C, 1, 1, device=device, dtype=dt).chunk(2, dim=1)[0]
                n = B * C * H * W
                for S, full in ((2, False), (2, True), (1, True)):
                    x = torch.randn(S, B, C, H, W, device=device, dtype=dt)
                    r = torch.randn(S, B, C, H, W, device=device, dtype=dt) if full else None
                    sc = scale if full else None
                    impls = {"torch": lambda x=x, r=r, sc=sc, t=t, w=w: silu_affine_adjoint_reference(x, t, w, sc, r)}
                    if gpu:
                        impls["triton"] = lambda x=x, r=r, sc=sc, t=t, w=w: silu_affine_adjoint_triton(x, t, w, sc, r)
                    moved = (S * n * (3 if full else 2) + n) * es
                    what = "w+scale+residual" if full else "w"
                    yield Case("silu_affine_adjoint", f"S={S} B={B} {C}x{H}x{W} {what}", dt, impls, moved)


def time_impls(impls: dict[str, Callable], device: str, quick: bool) -> dict[str, dict]:
    """``timing.quantiles`` of each implementation's seconds per call, interleaved rounds; each sample the mean of
    back-to-back calls lasting about 1 ms (warm caches), the device synchronised before the clock stops."""
    sync = device_sync(device)
    number = calls_per_sample(next(iter(impls.values())), sync)
    times = interleaved(impls, repeats=10 if quick else 30, warmup=2, sync=sync, number=number)
    return {name: quantiles(t) for name, t in times.items()}


def timing_table(device: str, dtypes: list[torch.dtype], batches: list[int], quick: bool) -> list[str]:
    gpu = device == "cuda"
    rate = "TFLOP/s" if gpu else "GFLOP/s"
    lines = [f"| kernel | shape | dtype | impl | median us | p10-p90 us | GB/s | {rate} | vs torch | note |",
             "|---|---|---|---|---:|---:|---:|---:|---:|---|"]
    for case in cases(device, dtypes, batches, with_triton=gpu):
        timings = time_impls(case.impls, device, quick)
        base = timings["torch"]["median"]
        for name, q in timings.items():
            med = q["median"]
            flops = f"{case.flops / med / (1e12 if gpu else 1e9):.2f}" if case.flops else ""
            lines.append(f"| {case.kernel} | {case.shape} | {str(case.dtype).split('.')[1]} | {name} | {med * 1e6:.1f} | "
                         f"{q['p10'] * 1e6:.1f}-{q['p90'] * 1e6:.1f} | {case.bytes / med / 1e9:.1f} | {flops} | "
                         f"{'' if name == 'torch' else f'x{base / med:.2f}'} | {case.note if name != 'torch' else ''} |")
    return lines


def _ctas_per_sm(regs: int, warps: int, shared: int, arch: str) -> int:
    """Resident programs per SM allowed by registers (64K per SM, allocated 8 per thread at a time), threads
    (2048), the 32-CTA cap and shared memory (228 KB on sm_90, 164 KB on sm_80, 1 KB reserved per CTA): an
    upper bound from the compiled metadata, not a measured occupancy."""
    by_regs = 65536 // (((regs + 7) // 8 * 8) * 32 * warps)
    smem = (228 if arch == "sm_90" else 164) * 1024
    return min(by_regs, 2048 // (32 * warps), 32, smem // (shared + 1024))


def metadata_table() -> list[str]:
    from kernels.aot import compile_all

    lines = [("| kernel | arch | warps | stages | shared B | registers | CTAs/SM (est.) | spill st/ld B | stack B | "
             "MMA | PTX KB | cubin KB |"), "|---|---|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|"]
    for r in compile_all():
        regs = r["registers"]
        ctas = _ctas_per_sm(regs, r["num_warps"], r["shared_bytes"], r["arch"]) if regs else ""
        lines.append(f"| {r['kernel']} | {r['arch']} | {r['num_warps']} | {r['num_stages']} | {r['shared_bytes']} | "
                     f"{regs} | {ctas} | {r['spill_store_bytes']}/{r['spill_load_bytes']} | {r['stack_bytes']} | "
                     f"{r['mma']} | {r['ptx_bytes'] / 1024:.0f} | {r['cubin_bytes'] / 1024:.0f} |")
    return lines


@torch.no_grad()
def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--batches", default="1,16", help="comma-separated batch sizes")
    p.add_argument("--quick", action="store_true", help="short timing runs (smoke test)")
    p.add_argument("--no-compile", action="store_true", help="skip the compile-metadata table")
    p.add_argument("--out", default=None)
    args = p.parse_args()
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        raise SystemExit("unset TRITON_INTERPRET: interpreter timings are meaningless and it replaces the compiler")
    if args.threads:
        torch.set_num_threads(args.threads)
    gpu = torch.cuda.is_available()
    device = "cuda" if gpu else "cpu"
    dtypes = [torch.float32, torch.float16] if gpu else [torch.float32]
    batches = [int(b) for b in args.batches.split(",")]
    load = os.getloadavg()[0]
    lines = [header(__file__), f"Load average (1 min) at start: {load:.2f} on {os.cpu_count()} cores"
             + (": other processes were running, CPU timings are noisy." if load > 0.5 else "."), ""]
    if gpu:
        lines += [(f"Device: {torch.cuda.get_device_name()}. Times: median and p10-p90 of interleaved rounds "
                  "(engine.evaluation.timing), warm caches."), ""]
    else:
        lines += [("Device: CPU only, no CUDA. The Triton kernels were NOT run: outside TRITON_INTERPRET=1 they need a "
                  "GPU, and interpreter timings measure Python emulation, not the kernel (their correctness is checked "
                  "under the interpreter by tests/test_kernels.py). Below: the PyTorch references, "
                  "median and p10-p90 of interleaved rounds, fp32. The largest cases (e.g. tap_pair_norm at B=16, full "
                  "resolution) are dominated by page faults on fresh multi-MB temporaries, which the CPU allocator "
                  "returns to the OS on free, not by arithmetic."), ""]
    lines += [("GB/s: minimum traffic (each input read once, each output written once) / median time. Attention FLOPs: "
              "4 B N^2 C (QK^T and PV, 2 per MAC). Shapes: the default ClassifierConfig / SubnetConfig (80 x 72 "
              "input, taps 32/48/96/192 channels, attention at C = 64 and 96 with 4 heads)."), "", "## Timings", ""]
    lines += timing_table(device, dtypes, batches, args.quick)
    if not args.no_compile:
        lines += ["", "## Compiled kernels (triton.compile, no GPU: metadata only)", "",
                  ("Every kernel in the launch configuration its wrapper uses (kernels.aot.specs), compiled for "
                  "GPUTarget('cuda', 90, 32) and ('cuda', 80, 32). Shared memory from Triton's metadata; registers, "
                  "spills and stack from `ptxas -v` (the ptxas Triton uses) on the same PTX. CTAs/SM (est.) is "
                  "an upper bound from registers, threads and shared memory, not a measured occupancy."), ""]
        lines += metadata_table()
    emit("\n".join(lines) + "\n", args.out)


if __name__ == "__main__":
    main()
