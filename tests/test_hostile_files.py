"""Hostile checkpoint folders and caches are refused by name, quickly: never a hang on a FIFO or a device, never
a RecursionError or unbounded read, never weights loaded unverified or silently cast (engine.storage.safe_files)."""
from __future__ import annotations

import json
import os
import shutil
import threading

import pytest
import torch
from safetensors.torch import load_file, save_file

from engine.bundle import load_bundle
from engine.errors import CheckpointError
from engine.storage.checkpoint import DEFAULT_CHECKPOINT, read_config
from engine.storage.hashing import file_sha256
from engine.storage.safe_files import load_json
from engine.storage.state_file import load_state


@pytest.fixture
def bundle_copy(tmp_path):
    out = tmp_path / "ck"
    shutil.copytree(DEFAULT_CHECKPOINT, out, ignore=shutil.ignore_patterns("state", "*_distilled*", "unet*",
                                                                             "score_ablation*"))
    return out


def _within(seconds: float, fn):
    """fn's exception (or None) if it returns within ``seconds``; fails the test on a hang."""
    box = {}

    def run():
        try:
            fn()
        except BaseException as e:  # noqa: BLE001 - handed to the test
            box["e"] = e

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(seconds)
    assert not t.is_alive(), f"still running after {seconds} s: a hang"
    return box.get("e")


@pytest.mark.parametrize("target", ["/dev/zero", "fifo"])
def test_a_config_that_is_a_device_or_a_fifo_is_refused_not_read(bundle_copy, target):
    cfg = bundle_copy / "config.json"
    cfg.unlink()
    if target == "fifo":
        os.mkfifo(cfg)
    else:
        cfg.symlink_to(target)
    e = _within(10, lambda: read_config(bundle_copy))
    assert isinstance(e, CheckpointError) and "not a regular file" in str(e) and "config.json" in str(e)


def test_weights_linked_to_a_device_are_refused_before_hashing(bundle_copy):
    w = bundle_copy / "score_subnet.safetensors"
    w.unlink()
    w.symlink_to("/dev/zero")
    e = _within(10, lambda: load_bundle(bundle_copy, model="tapdiff"))
    assert isinstance(e, CheckpointError) and "score_subnet.safetensors is not a regular file" in str(e)
    e = _within(10, lambda: file_sha256(w))
    assert isinstance(e, CheckpointError)


def test_a_link_out_of_the_folder_is_refused(bundle_copy, tmp_path):
    outside = tmp_path / "elsewhere.json"
    shutil.copyfile(bundle_copy / "config.json", outside)
    (bundle_copy / "config.json").unlink()
    (bundle_copy / "config.json").symlink_to(outside)
    with pytest.raises(CheckpointError, match="outside"):
        read_config(bundle_copy)


@pytest.mark.parametrize("text,reason", [("[" * 100_000 + "]" * 100_000, "nests deeper"),
                                         ('{"format": ' + "9" * 5000 + "}", "not valid JSON"),
                                         ('{"a": 1', "not valid JSON")])
def test_json_that_would_overflow_the_stack_or_the_int_parser_is_named(tmp_path, text, reason):
    path = tmp_path / "config.json"
    path.write_text(text)
    with pytest.raises(CheckpointError, match=reason) as e:
        load_json(path)
    assert "config.json" in str(e.value)


def test_an_oversized_json_is_refused_without_reading_it_whole(tmp_path):
    path = tmp_path / "big.json"
    path.write_text(" " * 2000 + "{}")
    with pytest.raises(CheckpointError, match="larger than 1000 bytes"):
        load_json(path, max_bytes=1000)


def test_weights_not_listed_in_the_config_or_of_another_dtype_are_refused(bundle_copy):
    cfg = json.loads((bundle_copy / "config.json").read_text())
    del cfg["files"]["score_subnet.safetensors"]
    (bundle_copy / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="not listed in config.json's files"):
        load_bundle(bundle_copy, model="tapdiff")
    path = bundle_copy / "score_subnet.safetensors"
    save_file({k: v.double() for k, v in load_file(str(path)).items()}, str(path))
    cfg["files"]["score_subnet.safetensors"] = file_sha256(path)
    (bundle_copy / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="torch.float64.*refused rather than cast"):
        load_bundle(bundle_copy, model="tapdiff")


def test_a_training_state_that_is_a_fifo_is_refused(tmp_path):
    path = tmp_path / "x.state.safetensors"
    os.mkfifo(path)
    e = _within(10, lambda: load_state(path))
    assert isinstance(e, CheckpointError) and "not a regular file" in str(e)


def test_the_shipped_bundle_still_loads():
    assert load_bundle(DEFAULT_CHECKPOINT, model="tapdiff").score_net is not None
    assert torch.isfinite(next(load_bundle(DEFAULT_CHECKPOINT, model="two-model").score_net.parameters())).all()


def test_labels_beyond_the_classifiers_classes_are_refused(bundle_copy):
    cfg = json.loads((bundle_copy / "config.json").read_text())
    cfg["labels"] = [*cfg["labels"], 50]
    cfg["training"]["score_subnet"]["config"]["labels"] = cfg["labels"]
    (bundle_copy / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match=r"labels \[50\] are beyond the classifier's 10 classes"):
        load_bundle(bundle_copy, model="tapdiff")
