"""The convolution replay behind benchmarks/conv_rates.py: it sees every convolution an evaluation runs, with
the input layout, counts their MACs as the engine's own counter does, and leaves torch as it found it."""
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import conv_rates  # noqa: E402


def test_recorded_convolutions_match_the_engine_mac_count_and_keep_their_layout():
    from engine.evaluation.cost import count_macs

    conv = torch.nn.Conv2d(4, 6, 3, padding=1)
    x = torch.randn(2, 4, 10, 12)
    g = torch.randn(2, 6, 5, 6).contiguous(memory_format=torch.channels_last)
    w = torch.randn(6, 4, 3, 3)

    def work():
        conv(x)
        F.conv_transpose2d(g, w, None, 2, 1, 1)

    calls = []
    with torch.no_grad(), conv_rates.recorded_convolutions(calls):
        work()
    assert F.conv2d is torch.nn.functional.conv2d and F.conv2d.__name__ == "conv2d"  # restored
    assert [c[0] for c in calls] == ["conv2d", "conv_transpose2d"]
    assert calls[0][2] is torch.contiguous_format and calls[1][2] is torch.channels_last
    run, macs, labels = conv_rates.replayer(calls)
    with torch.no_grad():
        assert len(run()) == 2 and "channels-last in" in labels[1]
        assert sum(macs) == count_macs(work)
