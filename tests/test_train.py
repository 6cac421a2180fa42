"""Training runs, logs, checkpoints, and resumes where it stopped."""

import json
from pathlib import Path

import pytest

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


def test_weight_averaging_is_validated_saved_and_resumed(tmp_path):
    import torch

    config = tiny_config(tmp_path, epochs=1)
    config.ema_decay = 0.5
    train(config, log=lambda message: None)
    run = tmp_path / "runs" / "tiny"
    checkpoint = torch.load(run / "last.pt", weights_only=False)
    assert int(checkpoint["average"]["n_averaged"]) == checkpoint["state"]["step"] + 1 == 2  # start + 1 step
    record = json.loads((run / "log.jsonl").read_text())
    assert record["val"] != record["val_raw"]
    best, _ = load_model(str(run / "best.safetensors"))  # epoch 1 is the best so far: the average is saved
    name = "blocks.0.frame_update.weight"
    assert torch.equal(best.state_dict()[name], checkpoint["average"]["module." + name])
    assert not torch.equal(best.state_dict()[name], checkpoint["model"][name])

    config.epochs = 2
    train(config, log=lambda message: None)
    assert int(torch.load(run / "last.pt", weights_only=False)["average"]["n_averaged"]) == 3


def test_weight_averaging_can_be_switched_on_when_resuming(tmp_path):
    import torch

    config = tiny_config(tmp_path, epochs=1)
    train(config, log=lambda message: None)
    config.epochs, config.ema_decay = 2, 0.5
    messages = []
    train(config, log=messages.append)
    assert any("average starts from the resumed weights" in m for m in messages)
    checkpoint = torch.load(tmp_path / "runs" / "tiny" / "last.pt", weights_only=False)
    assert int(checkpoint["average"]["n_averaged"]) == 2  # resumed weights + 1 step


def test_the_seed_sets_the_initial_weights(tmp_path):
    import torch

    from immunofold.train.loop import build_model

    config = tiny_config(tmp_path, epochs=1)
    first = build_model(config, torch.device("cpu")).state_dict()
    torch.manual_seed(12345)  # the global state before the call must not matter
    again = build_model(config, torch.device("cpu")).state_dict()
    config.seed = 1
    other = build_model(config, torch.device("cpu")).state_dict()
    name = "trunk.0.qkv.weight"
    assert torch.equal(first[name], again[name]) and not torch.equal(first[name], other[name])


def test_learning_rate_holds_its_peak_until_decay_starts_then_falls_to_a_tenth():
    from immunofold.train.loop import learning_rate

    config = TrainConfig(name="lr", learning_rate=1e-3, warmup_steps=10, decay_after_epochs=1, epochs=5)
    steps_per_epoch = 100
    assert learning_rate(0, config, steps_per_epoch) == pytest.approx(1e-4)
    assert learning_rate(10, config, steps_per_epoch) == learning_rate(99, config, steps_per_epoch) == 1e-3
    assert learning_rate(300, config, steps_per_epoch) < 1e-3
    assert learning_rate(499, config, steps_per_epoch) == pytest.approx(1e-4, rel=1e-3)
    config.epochs = 50  # the plateau does not depend on the epoch count
    assert learning_rate(99, config, steps_per_epoch) == 1e-3


def test_a_time_boxed_run_records_the_epochs_it_chose(tmp_path):
    config = tiny_config(tmp_path, epochs=99)
    config.fit_epochs_to_minutes, config.decay_after_epochs = 1e-4, 1  # far less than one epoch: the minimum, 2
    messages = []
    train(config, log=messages.append)
    saved = TrainConfig.from_yaml(str(tmp_path / "runs" / "tiny" / "config.yaml"))
    assert saved.epochs == 2 and saved.fit_epochs_to_minutes is None
    records = (tmp_path / "runs" / "tiny" / "log.jsonl").read_text().splitlines()
    assert len(records) == 2 and any("training 2 epochs" in m for m in messages)

    restarted = TrainConfig(**{**config.__dict__, "epochs": 99, "fit_epochs_to_minutes": 1e-4})  # the same command again

    train(restarted, log=messages.append)
    assert restarted.epochs == 2  # the run was complete: nothing more
    assert len((tmp_path / "runs" / "tiny" / "log.jsonl").read_text().splitlines()) == 2


def test_yaml_numbers_written_without_a_dot_are_numbers(tmp_path):
    path = tmp_path / "lr.yaml"
    path.write_text("name: lr\nlearning_rate: 1e-3\nloss_weights: {fape_backbone: 1e-3}\n")  # PyYAML reads these as text
    config = TrainConfig.from_yaml(str(path))
    assert config.learning_rate == 1e-3 and config.loss_weights["fape_backbone"] == 1e-3


def test_every_config_in_the_repository_is_valid():
    configs = sorted((Path(__file__).parent.parent / "configs").rglob("*.yaml"))
    assert len(configs) > 50
    for path in configs:
        TrainConfig.from_yaml(str(path))


def test_time_boxed_configs_must_not_decay_before_the_epochs_are_known(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("name: bad\nfit_epochs_to_minutes: 5\n")
    with pytest.raises(ValueError, match="needs decay_after_epochs >= 1"):
        TrainConfig.from_yaml(str(path))


def test_training_kinds_filter_the_examples_and_oversampling_repeats_them(tmp_path):
    import random

    from immunofold.train.loop import epoch_examples, training_examples

    config = tiny_config(tmp_path, epochs=1)
    config.train_kinds = ["tcr"]
    assert training_examples(config) == []
    config.train_kinds, config.oversample = ["nanobody"], {"nanobody": 3}
    examples = training_examples(config)
    assert len(examples) == 1 and len(epoch_examples(examples, config, random.Random(0))) == 3


def test_cdr3_cluster_sampling_takes_one_example_per_identical_cdr3():
    import random

    import torch

    from immunofold.train.loop import epoch_examples

    def example(name, cdr3, kind=0):
        positions = [100, 105, 106, 107, 118]
        return {"name": name, "kind": torch.tensor(kind), "imgt_position": torch.tensor(positions),
                "chain_slot": torch.zeros(5, dtype=torch.long), "restype": torch.tensor([1, *cdr3, 2])}

    examples = [example("a1", [5, 6, 7]), example("a2", [5, 6, 7]), example("a3", [5, 6, 7]),
                example("b", [5, 6, 8]), example("c", [5, 6, 7], kind=1)]
    config = TrainConfig(name="clusters", cdr3_cluster_sampling=True)
    names = [[e["name"] for e in epoch_examples(examples, config, random.Random(seed))] for seed in range(20)]
    assert all(len(epoch) == 3 and "b" in epoch and "c" in epoch for epoch in names)
    assert {epoch[0] for epoch in names} == {"a1", "a2", "a3"}  # the cluster's example changes between epochs


def test_residue_type_dropout_hides_types_in_training_only():
    import torch

    from immunofold.model.network import ResidueEmbedding

    embedding = ResidueEmbedding(dim=8, restype_dropout=1.0)
    batch = {
        "restype": torch.tensor([[0, 5, 9]]),
        "chain_class": torch.zeros(1, 3, dtype=torch.long),
        "kind": torch.tensor([1]),
        "imgt_position": torch.tensor([[1, 2, 3]]),
        "imgt_insertion": torch.zeros(1, 3, dtype=torch.long),
    }
    other = {**batch, "restype": torch.tensor([[3, 5, 12]])}
    embedding.train()
    assert torch.equal(embedding(batch), embedding(other))  # every type hidden: only positions remain
    embedding.eval()
    assert not torch.allclose(embedding(batch), embedding(other))
    assert torch.equal(embedding(batch)[:, 1], embedding(other)[:, 1])  # same type at position 2


def test_train_cli_names_a_missing_starting_point(tmp_path, capsys):
    from immunofold.cli import main

    config = tmp_path / "member.yaml"
    config.write_text(f"name: member\nrun_dir: {tmp_path / 'runs'}\ninit_from: {tmp_path / 'missing.safetensors'}\n")
    assert main(["train", "--config", str(config)]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith(f"error: {config}: init_from") and "missing.safetensors not found" in error and "\n" not in error


@pytest.mark.parametrize("text, options, message", [
    (None, [], "{config}: No such file or directory"),
    ("epochs: [1\n", [], "{config}: not valid YAML (line 2)"),
    ("bogus_key: 3\nmodel:\n  dimm: 8\n", [], "{config}: unknown config key(s) bogus_key, model.dimm"),
    ("name: x\n", ["--threads", "0"], "--threads 0: give 1 or more"),
    ("name: x\n", ["--max-minutes", "-1"], "--max-minutes -1.0: give a positive number"),
    ("", [], "{config}: missing required key name"),
    ("name: x\nbatch_size: eight\n", [], "{config}: batch_size: expected an integer, got 'eight'"),
    ("name: x\nbatch_size: 0\n", [], "{config}: batch_size must be positive, got 0"),
    ("name: x\nepochs: -1\n", [], "{config}: epochs must be positive, got -1"),
    ("name: x\naux_kinds: [nanobdy]\n", [], "{config}: aux_kinds: unknown receptor kind(s) nanobdy (known: antibody, nanobody, tcr)"),
    ("name: x\nmodel:\n  dim: big\n", [], "{config}: model.dim: expected an integer, got 'big'"),
    ("name: x\nlearning_rate: fast\n", [], "{config}: learning_rate: expected a finite number, got 'fast'"),
    ("name: x\nlearning_rate: .nan\n", [], "{config}: learning_rate: expected a finite number, got nan"),
    ("name: x\n1: 2\n", [], "{config}: unknown config key(s) 1"),
    ("name: x\nmodel: []\n", [], "{config}: expected a mapping of config keys (and a 'model' mapping)"),
    ("name: ''\n", [], "{config}: name must not be empty (it names the run's folder)"),
    ("name: x\nseed: 100000000000000000000000\n", [], "{config}: seed must be in [0, 2^63), got 100000000000000000000000"),
    ("name: x\nthreads: 100000\n", [], "{config}: threads must be at most 1024, got 100000"),
    ("name: x\nmodel:\n  dim: -8\n", [], "{config}: model.dim must be positive, got -8"),
    ("name: x\nmodel:\n  dropout: 2.0\n", [], "{config}: model.dropout must be in [0, 1), got 2.0"),
    ("name: x\nmodel:\n  trunk_heads: 3\n", [], "{config}: model.dim (128) must be a multiple of model.trunk_heads (3)"),
    ("name: x\nmax_minutes: -1\n", [], "{config}: max_minutes must be positive, got -1"),
    ("name: x\ndistillation_pairs: {nanobody: 5}\n", [], "{config}: distillation_pairs: only paired kinds are "
     "chain-shuffled (antibody, tcr), not nanobody"),
    ("name: x\ndistillation_pairs: {antibody: -5}\n", [], "{config}: distillation_pairs: counts must be 0 or more"),
    ("name: x\nloss_weights: {bond: -1}\n", [], "{config}: loss_weights.bond must be 0 or more, got -1"),
    ("name: x\nloss_weights: {fape: 1}\n", [], "{config}: loss_weights: unknown term(s) fape (known: "
     "fape_backbone, fape_all_atom, torsion, bond, clash, error, cdr_rmsd, disulfide, distogram, cdr3_class)"),
])
def test_train_cli_refuses_bad_configs_and_options_in_one_line(tmp_path, capsys, text, options, message):
    from immunofold.cli import main

    config = tmp_path / "member.yaml"
    if text is not None:
        config.write_text(text)
    assert main(["train", "--config", str(config), *options]) == 2
    assert capsys.readouterr().err == f"error: {message.format(config=config)}\n"


def test_training_without_data_is_refused_and_leaves_no_run(tmp_path, capsys):
    from immunofold.cli import main

    config = tmp_path / "member.yaml"
    config.write_text(f"name: empty\ndata_root: {tmp_path / 'nowhere'}\nrun_dir: {tmp_path / 'runs'}\n"
                      f"cache_dir: {tmp_path / 'cache'}\n")
    assert main(["train", "--config", str(config)]) == 2
    error = capsys.readouterr().err
    assert error.startswith(f"error: {config}: no training examples of split 'train' under data_root") and error.count("\n") == 1
    assert not (tmp_path / "runs" / "empty").exists()


def test_cdr3_curriculum_starts_with_each_kinds_shortest_cdr3s_and_ends_with_all():
    import random

    import torch

    from immunofold.train.loop import curriculum_examples, epoch_examples

    def example(name, cdr3_length, kind):
        positions = [100] + list(range(105, 105 + cdr3_length)) + [118]
        return {"name": name, "kind": torch.tensor(kind), "imgt_position": torch.tensor(positions),
                "chain_slot": torch.zeros(len(positions), dtype=torch.long), "restype": torch.ones(len(positions), dtype=torch.long)}

    examples = [example(f"k{kind}-{n}", n, kind) for kind, lengths in ((0, [5, 6, 7, 8]), (1, [10, 12])) for n in lengths]
    names = lambda chosen: sorted(e["name"] for e in chosen)
    assert names(curriculum_examples(examples, 0, 2)) == ["k0-5", "k0-6", "k1-10"]  # the shorter half of each kind
    assert names(curriculum_examples(examples, 1, 2)) == ["k0-5", "k0-6", "k0-7", "k1-10"]  # 75 %
    assert names(curriculum_examples(examples, 2, 2)) == names(examples)
    config = TrainConfig(name="curriculum", cdr3_curriculum_epochs=2)
    assert len(epoch_examples(examples, config, random.Random(0), 0)) == 3
    assert len(epoch_examples(examples, config, random.Random(0))) == 6  # no epoch given: a full epoch


LABEL_COLUMNS = ("pdb", "structure_id", "sequence", "cdr3_imgt", "cdr3_class", "class_confidence", "manual_label")


def write_label_table(folder: str, rows: list[tuple]) -> None:
    """A minimal aux/nbframe_cdr3_classes.tsv (the columns the importer reads)."""
    import os

    os.makedirs(os.path.join(folder, "aux"), exist_ok=True)
    with open(os.path.join(folder, "aux", "nbframe_cdr3_classes.tsv"), "w") as handle:
        handle.write("\t".join(LABEL_COLUMNS) + "\n")
        handle.writelines("\t".join(row) + "\n" for row in rows)


def test_cdr3_class_labels_train_the_head_and_its_val_ranking_is_logged(tmp_path, nanobody_atoms):
    from test_network import LONG_CDR3_NANOBODY

    from immunofold.data.cdr3_classes import cached_class_examples

    config = tiny_config(tmp_path, epochs=1)
    config.model.cdr3_class_head, config.cdr3_class_batch = True, 2
    write_label_table(config.data_root, [
        ("1f2x", "1f2x_L", LONG_CDR3_NANOBODY, "-", "Kinked", "High_Kinked", ""),
        ("1abc", "1abc_A", LONG_CDR3_NANOBODY.replace("YDYHY", "YDYHA"), "-", "Kinked", "Uncertain", "Extended"),
        ("1bad", "1bad_A", "QVQLXESGG", "-", "Kinked", "High_Kinked", ""),
        ("7f5h", "7f5h_B", nanobody_atoms[3], "-", "Extended", "High_Extended", ""),  # the val nanobody itself
    ])
    train(config, log=lambda message: None)
    record = json.loads((tmp_path / "runs" / "tiny" / "log.jsonl").read_text())
    assert record["train"]["cdr3_class"] > 0
    assert 0 <= record["val"]["cdr3_class"]["accuracy"] <= 1  # one val nanobody: accuracy, no AUC (one class)

    examples = cached_class_examples(config.data_root, config.cache_dir, config.val_split)
    assert [(e["name"], float(e["cdr3_extended"])) for e in examples] == [("nbframe:1f2x_L", 0.0), ("nbframe:1abc_A", 1.0)]
    (skipped_file,) = (tmp_path / "cache").glob("skipped-cdr3-classes-v1-*.txt")
    skipped = skipped_file.read_text()
    assert "nbframe:1bad_A heavy chain: invalid letters 'X'" in skipped and "nbframe:7f5h_B: CDR3 identical to val entry" in skipped


def test_cdr3_class_loss_is_the_mean_binary_cross_entropy():
    import math

    import torch

    from immunofold.train.loop import cdr3_class_loss

    loss = cdr3_class_loss(torch.tensor([0.0, math.log(3)]), torch.tensor([1.0, 0.0]))
    assert loss.item() == pytest.approx((math.log(2) + math.log(4)) / 2)  # p = 0.5 for Extended; p = 0.75 for Kinked


def test_nanobodies_whose_cdr3_stands_out_can_be_oversampled(tmp_path):
    import random

    from immunofold.constants import is_cdr
    from immunofold.metrics import STANDING_OUT_REACH, cdr3_reach
    from immunofold.train.loop import epoch_examples, training_examples

    config = tiny_config(tmp_path, epochs=1)
    (folded,) = training_examples(config)
    standing_out = dict(folded, atom14=folded["atom14"].clone())
    standing_out["atom14"][is_cdr(folded["imgt_position"], 3)] += 30.0  # the loop moved 30 Å away from the domain
    reach = lambda e: cdr3_reach(e["atom14"], e["atom_mask"], e["chain_slot"], e["imgt_position"])  # noqa: E731
    assert reach(folded) < STANDING_OUT_REACH < reach(standing_out)

    config.oversample, config.standing_out_oversample = {"nanobody": 2}, 3
    epoch = epoch_examples([folded, standing_out], config, random.Random(0))
    assert [e is standing_out for e in epoch].count(True) == 6 and [e is folded for e in epoch].count(True) == 2


@pytest.mark.parametrize("rows, columns, message", [
    ([("1abc", "1abc_A", "QVQL", "-", "Bent", "High", "")], LABEL_COLUMNS, "line 2: unknown CDR3 class 'Bent' (Extended or Kinked)"),
    ([("1abc", "1abc_A", "QVQL", "-", "Kinked", "High")], LABEL_COLUMNS[:-1], "missing column(s) manual_label"),
    ([], LABEL_COLUMNS, "needs at least cdr3_class_batch (2) usable rows"),
])
def test_bad_cdr3_label_tables_are_refused_in_one_line(tmp_path, capsys, rows, columns, message):
    import os

    import yaml

    from immunofold.cli import main

    config = tiny_config(tmp_path, epochs=1)
    config.model.cdr3_class_head, config.cdr3_class_batch = True, 2
    os.makedirs(os.path.join(config.data_root, "aux"))
    with open(os.path.join(config.data_root, "aux", "nbframe_cdr3_classes.tsv"), "w") as handle:
        handle.write("\t".join(columns) + "\n")
        handle.writelines("\t".join(row) + "\n" for row in rows)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config.to_dict()))
    assert main(["train", "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err, err
    assert not (tmp_path / "runs" / "tiny").exists()


def test_the_label_cache_follows_the_table(tmp_path, nanobody_atoms):
    from test_network import LONG_CDR3_NANOBODY

    from immunofold.data.cdr3_classes import cached_class_examples

    config = tiny_config(tmp_path, epochs=1)
    write_label_table(config.data_root, [("1f2x", "1f2x_L", LONG_CDR3_NANOBODY, "-", "Kinked", "High_Kinked", "")])
    assert [float(e["cdr3_extended"]) for e in cached_class_examples(config.data_root, config.cache_dir, "train")] == [0.0]
    write_label_table(config.data_root, [("1f2x", "1f2x_L", LONG_CDR3_NANOBODY, "-", "Kinked", "High_Kinked", "Extended")])
    assert [float(e["cdr3_extended"]) for e in cached_class_examples(config.data_root, config.cache_dir, "train")] == [1.0]


def test_chain_shuffling_joins_one_receptors_first_chain_to_anothers_second():
    import torch
    from test_sequences import HUMAN_HEAVY, HUMAN_KAPPA, HUMAN_LAMBDA, MOUSE_HEAVY

    from immunofold.data.distillation import shuffled_receptor
    from immunofold.data.features import featurise
    from immunofold.sequences import number_receptor

    first = number_receptor("antibody", {"heavy": HUMAN_HEAVY, "light": HUMAN_KAPPA})
    second = number_receptor("antibody", {"heavy": MOUSE_HEAVY, "light": HUMAN_LAMBDA})
    shuffled = shuffled_receptor(featurise("antibody", first), featurise("antibody", second))
    expected = featurise("antibody", [first[0], second[1]])
    assert shuffled.keys() == expected.keys()
    assert all(torch.equal(shuffled[key], expected[key]) for key in expected)


def test_the_distillation_set_holds_the_asked_number_of_shuffled_receptors_and_only_new_nanobodies():
    import random

    from test_sequences import CAMELID_VHH, HUMAN_HEAVY, HUMAN_KAPPA, HUMAN_LAMBDA, MOUSE_HEAVY

    from immunofold.data.distillation import synthetic_receptors
    from immunofold.data.features import featurise
    from immunofold.sequences import number_receptor

    train = [featurise("antibody", number_receptor("antibody", {"heavy": heavy, "light": light}))
             for heavy, light in ((HUMAN_HEAVY, HUMAN_KAPPA), (MOUSE_HEAVY, HUMAN_LAMBDA))]
    nanobody = featurise("nanobody", number_receptor("nanobody", {"heavy": CAMELID_VHH}))
    rows = [{**nanobody, "name": "nbframe:1abc_A"}, {**nanobody, "name": "nbframe:7F5G_B"}]
    receptors = synthetic_receptors(train, rows, {"7f5g"}, random.Random(0), {"antibody": 5, "tcr": 3})
    kinds = [int(r["kind"]) for r in receptors]
    assert kinds == [int(train[0]["kind"])] * 5 + [int(nanobody["kind"])]  # no TCR pairs to shuffle; 7f5g has a structure
    assert all(len(r["restype"]) in (len(train[0]["restype"]) - len(HUMAN_KAPPA) + len(HUMAN_LAMBDA),
                                     len(train[1]["restype"]) - len(HUMAN_LAMBDA) + len(HUMAN_KAPPA)) for r in receptors[:5])


def test_teacher_targets_are_the_ensembles_consensus_and_the_error_head_skips_them():
    import numpy as np
    import torch
    from test_sequences import CAMELID_VHH, HUMAN_HEAVY, HUMAN_KAPPA

    import immunofold
    from immunofold.data.distillation import teacher_examples
    from immunofold.data.features import collate, featurise
    from immunofold.ensemble import Ensemble
    from immunofold.sequences import number_receptor
    from immunofold.train.losses import total_loss

    receptors = [featurise("nanobody", number_receptor("nanobody", {"heavy": CAMELID_VHH})),
                 featurise("antibody", number_receptor("antibody", {"heavy": HUMAN_HEAVY, "light": HUMAN_KAPPA}))]
    examples = teacher_examples(receptors, Ensemble.packaged())
    predicted = immunofold.predict(heavy=CAMELID_VHH, refine=False)
    assert np.allclose(examples[0]["atom14"][examples[0]["atom_mask"]].numpy(),
                       predicted.atom14[examples[0]["atom_mask"].numpy()], atol=1e-4)
    assert int(examples[0]["atom_mask"].sum()) == sum(len(residue) for residue in predicted.structure()[0][0])
    assert all(bool(e["teacher_target"]) for e in examples) and examples[1]["kind"] == receptors[1]["kind"]

    # the error head's target is a deviation from a crystal structure: teacher examples do not train it
    crystal = {key: value for key, value in examples[0].items() if key != "teacher_target"}
    network = Ensemble.packaged().models_of("nanobody")[0]
    with torch.no_grad():
        output = network(collate([crystal]))
    error_max = network.config.error_max
    _, as_crystal = total_loss(output, collate([crystal]), {"error": 1.0}, error_max)
    _, as_teacher = total_loss(output, collate([examples[0]]), {"error": 1.0}, error_max)
    assert as_crystal["error"] > 0 and as_teacher["error"] == 0
    assert as_crystal["fape_backbone"] == as_teacher["fape_backbone"]


def test_a_distillation_run_adds_teacher_examples_for_receptors_without_a_structure(tmp_path):
    from test_network import LONG_CDR3_NANOBODY

    from immunofold.train.loop import training_examples

    config = tiny_config(tmp_path, epochs=1)
    config.distillation = True
    write_label_table(config.data_root, [
        ("1f2x", "1f2x_L", LONG_CDR3_NANOBODY, "-", "Kinked", "High_Kinked", ""),  # no structure here: a teacher target
        ("7f5g", "7f5g_B", LONG_CDR3_NANOBODY.replace("YDYHY", "YDYHA"), "-", "Kinked", "High_Kinked", ""),  # has one
    ])
    examples = training_examples(config)
    teacher = [e for e in examples if e.get("teacher_target") is not None]
    assert len(examples) == 2 and len(teacher) == 1  # 7f5g's crystal structure and 1f2x's teacher target
    assert len(teacher[0]["restype"]) == len(LONG_CDR3_NANOBODY) and teacher[0]["atom_mask"].any()
    train(config, log=lambda message: None)  # a step over both kinds of example
    record = json.loads((tmp_path / "runs" / "tiny" / "log.jsonl").read_text())
    assert record["train"]["error"] > 0 and record["train"]["fape_backbone"] > 0


def test_entries_of_excluded_sources_are_left_out_of_training(tmp_path):
    from immunofold.train.loop import training_examples

    config = tiny_config(tmp_path, epochs=1)  # one train nanobody, source "test"
    config.exclude_sources = ["abdb_greifflab"]
    assert [e["name"] for e in training_examples(config)] == ["7f5g_B"]
    config.exclude_sources = ["abdb_greifflab", "test"]
    assert training_examples(config) == []
