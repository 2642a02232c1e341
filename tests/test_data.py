import numpy as np
import pytest
import torch

from engine.audio.wav import write_wav
from engine.storage.config import FeatureConfig
from engine.audio.datasets import Normaliser, data_hash, list_items, load_features, shift_in_time


def test_fsdd_official_split_and_label_subsets(fsdd_root):
    train, test = list_items(fsdd_root, "train"), list_items(fsdd_root, "test")
    assert all(int(it.path.stem.split("_")[2]) < 5 for it in test)
    assert all(int(it.path.stem.split("_")[2]) >= 5 for it in train)
    assert not {it.path for it in train} & {it.path for it in test}
    three = list_items(fsdd_root, "train", (0, 1, 2))
    assert len(three) == sum(it.label in (0, 1, 2) for it in train) > 0 and {it.label for it in three} == {0, 1, 2}
    assert {it.label for it in list_items(fsdd_root, "test", (7,))} == {7}
    with pytest.raises(ValueError, match="unknown digit label"):
        list_items(fsdd_root, "train", (11,))


def test_fsdd_official_split_counts(full_fsdd):
    train, test = list_items(full_fsdd, "train"), list_items(full_fsdd, "test")
    assert (len(train), len(test)) == (2250, 250)
    assert len(list_items(full_fsdd, "train", (0, 1, 2))) == 675


@pytest.fixture
def speech_commands(tmp_path):
    """A miniature Speech Commands folder: digit words plus a non-digit word, with split lists."""
    rng = np.random.default_rng(0)
    for word in ("zero", "one", "seven", "bed"):
        for i in range(3):
            write_wav(tmp_path / word / f"spk{i}_nohash_0.wav", 0.3 * rng.standard_normal(16000).astype(np.float32), 16000)
    (tmp_path / "validation_list.txt").write_text("zero/spk1_nohash_0.wav\n")
    (tmp_path / "testing_list.txt").write_text("zero/spk2_nohash_0.wav\nseven/spk2_nohash_0.wav\n")
    return tmp_path


def test_speech_commands_folders_use_their_split_lists(speech_commands):
    train = list_items(speech_commands, "train")
    assert sorted((it.path.parent.name, it.label) for it in train) == [
        ("one", 1), ("one", 1), ("one", 1), ("seven", 7), ("seven", 7), ("zero", 0)]
    assert [it.path.name for it in list_items(speech_commands, "valid")] == ["spk1_nohash_0.wav"]
    assert sorted(it.label for it in list_items(speech_commands, "test")) == [0, 7]
    feats = load_features(list_items(speech_commands, "test"), FeatureConfig())
    assert feats.mels.shape == (2, 80, 72) and torch.isfinite(feats.mels).all()


def test_missing_or_foreign_folders_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        list_items(tmp_path / "nope", "train")
    with pytest.raises(FileNotFoundError, match="no Speech Commands"):
        list_items(tmp_path, "train")
    with pytest.raises(ValueError, match="unknown split"):
        list_items(tmp_path, "dev")


def test_data_hash_changes_with_content(speech_commands):
    items = list_items(speech_commands, "train")
    h = data_hash(items)
    assert h == data_hash(list(reversed(items)))
    p = items[0].path
    p.write_bytes(p.read_bytes()[:-2] + b"\x01\x02")
    assert data_hash(items) != h


def test_normaliser_floors_dead_bands_and_round_trips():
    mels = torch.randn(10, 80, 72)
    mels[:, -5:] = -11.5 + 1e-4 * torch.randn(10, 5, 72)  # bands above the source's Nyquist
    n = Normaliser.fit(mels)
    assert float(n.std[-1]) >= 0.1 * float(n.std.median())
    assert torch.allclose(n.denormalise(n.normalise(mels)), mels, atol=1e-5)


def test_time_shift_moves_speech_within_its_window_and_keeps_it_whole():
    x = torch.full((4, 3, 20), -1.0)
    spans = torch.tensor([[5, 9], [0, 20], [10, 20], [2, 3]])
    for b, (s, e) in enumerate(spans.tolist()):
        x[b, :, s:e] = torch.arange(s, e, dtype=torch.float32) + 10
    out = shift_in_time(x, spans, torch.full((3,), -1.0), torch.Generator().manual_seed(0))
    for b, (s, e) in enumerate(spans.tolist()):
        kept = out[b, 0][out[b, 0] != -1.0]
        assert torch.equal(kept, torch.arange(s, e, dtype=torch.float32) + 10)
