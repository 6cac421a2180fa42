"""Training runs, logs, checkpoints, and resumes where it stopped."""

import json

from test_data import NANOBODY_ROW, make_folder

from immunofold.train.config import TrainConfig
from immunofold.train.loop import train
from immunofold.model.network import ModelConfig
from immunofold.weights import load_model



def tiny_config(tmp_path, epochs: int) -> TrainConfig:
    folder = make_folder(tmp_path / "data", [NANOBODY_ROW])
    return TrainConfig(
        name="tiny",
        data_root=folder,
        cache_dir=str(tmp_path / "cache"),
        run_dir=str(tmp_path / "runs"),
        val_split="train",  # one structure: train and validate on it (a smoke test, not a benchmark)
        epochs=epochs,
        batch_size=1,
        learning_rate=1e-3,
        warmup_steps=1,
        model=ModelConfig(dim=32, trunk_layers=1, ipa_blocks=1, ipa_heads=4, trunk_heads=4),
    )


def test_training_checkpoints_and_resumes(tmp_path):
    messages = []
    config = tiny_config(tmp_path, epochs=2)
    train(config, log=messages.append)
    log_path = tmp_path / "runs" / "tiny" / "log.jsonl"
    records = [json.loads(line) for line in log_path.read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2]
    assert records[-1]["val"]["nanobody"]["H3"] > 0
    assert (tmp_path / "runs" / "tiny" / "last.pt").exists()

    config.epochs = 4
    messages.clear()
    train(config, log=messages.append)
    assert any("resumed tiny at epoch 2" in m for m in messages)
    records = [json.loads(line) for line in log_path.read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2, 3, 4]
    assert records[-1]["train"]["loss"] < records[0]["train"]["loss"]

    model, info = load_model(str(tmp_path / "runs" / "tiny" / "best.safetensors"))
    assert info["config"]["model"]["dim"] == 32 and model.template_atoms.abs().sum() > 0
