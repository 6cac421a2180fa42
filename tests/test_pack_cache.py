"""scripts/pack_cache.py: the featurisation cache survives packing for a GPU machine (coordinates to 0.005 Å)."""

import importlib.util
import os

import torch

from test_data import NANOBODY_ROW, make_folder

from immunofold.data.sabdab import cached_examples

SCRIPT = os.path.join(os.path.dirname(__file__), "..", "scripts", "pack_cache.py")


def load_script():
    spec = importlib.util.spec_from_file_location("pack_cache", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_pack_then_unpack_gives_back_the_examples(tmp_path):
    folder = make_folder(tmp_path / "data", [NANOBODY_ROW])
    original = cached_examples(folder, "train", str(tmp_path / "cache"), workers=1)
    pack_cache = load_script()
    pack_cache.pack(str(tmp_path / "cache"), str(tmp_path / "packed.npz"))
    pack_cache.unpack(str(tmp_path / "packed.npz"), str(tmp_path / "unpacked"))
    restored = torch.load(tmp_path / "unpacked" / "examples-train.pt", weights_only=False)
    assert len(restored) == len(original) == 1
    before, after = original[0], restored[0]
    assert set(before) == set(after)
    for key, value in before.items():
        if key == "atom14":
            present = before["atom_mask"]
            assert (value[present] - after[key][present]).abs().max() <= 0.0051
        elif torch.is_tensor(value):
            assert torch.equal(value, after[key]) and value.dtype == after[key].dtype, key
        else:
            assert value == after[key], key
