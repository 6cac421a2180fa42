"""AntiBERTy language-model features: which residues get them, and how a model reads them."""

import torch

from immunofold.data.features import collate, featurise
from immunofold.data.language import LANGUAGE_DIM, attach_language_features, batch_language_features, embed_sequences
from immunofold.model.network import ImmunoFoldNet, ModelConfig
from immunofold.sequences import number_chain
from immunofold.train.loop import load_init_weights

SMALL = dict(dim=32, trunk_layers=1, ipa_blocks=2, ipa_heads=4, trunk_heads=4)
TCR_ALPHA = "KNQVEQSPQSLIILEGKNCTLQCNYTVSPFSNLRWYKQDTGRGPVSLTILTFSENTKSNGRYTATLDADTKQSSLHITASQLSDSASYICVVSGGTDSWGKLQFGAGTQVVVTP"
TCR_BETA = "NAGVTQTPKFQVLKTGQSMTLQCAQDMNHEYMSWYRQDPGMGLRLIHYSVGAGITDQGEVPNGYNVSRSTTEDFPLRLLSAAPSQTSVYFCASSYVGNTGELFFGEGSRLTVL"


def nanobody_example(nanobody_atoms) -> dict:
    return featurise("nanobody", [number_chain(nanobody_atoms[3], "7f5g")])


def tcr_example() -> dict:
    from immunofold.sequences import number_receptor

    return featurise("tcr", number_receptor("tcr", {"alpha": TCR_ALPHA, "beta": TCR_BETA}, "1ao7"))


def test_antibody_chains_get_their_own_embedding_and_tcr_chains_none(nanobody_atoms, tmp_path):
    """A nanobody's residues get AntiBERTy's embedding of its chain alone; TCR chains and padding get zeros; the
    cached training features equal the ones computed at prediction."""
    nanobody, tcr = nanobody_example(nanobody_atoms), tcr_example()
    batch = collate([nanobody, tcr])
    features = batch_language_features(batch)  # [2, N_max, 512]
    n = len(nanobody["restype"])
    assert features.shape == (2, batch["restype"].shape[1], LANGUAGE_DIM)
    (alone,) = embed_sequences([number_chain(nanobody_atoms[3], "7f5g").sequence])
    assert torch.allclose(features[0, :n], alone, atol=1e-4)
    assert (features[0, :n] != 0).any(-1).all() and not features[0, n:].any()
    assert not features[1].any()

    attach_language_features([nanobody], cache_dir=str(tmp_path))
    assert torch.allclose(nanobody["language"].float(), alone, atol=1e-2)  # stored as float16


def test_language_projection_starts_with_no_effect_and_then_reads_antibody_residues_only(nanobody_atoms):
    """Older weights load into a language model with only the new projection missing and predict as before;
    once the projection is non-zero, the nanobody's prediction changes and the TCR's does not."""
    torch.manual_seed(0)
    older = ImmunoFoldNet(ModelConfig(**SMALL)).eval()
    older.template_atoms.normal_(std=5.0)
    newer = ImmunoFoldNet(ModelConfig(**SMALL, language_dim=LANGUAGE_DIM)).eval()
    added = load_init_weights(newer, older.state_dict())
    assert sorted(added) == ["embedding.language.0.bias", "embedding.language.0.weight", "embedding.language.1.weight"]

    for example in (nanobody_example(nanobody_atoms), tcr_example()):
        batch = collate([example])
        batch["language"] = batch_language_features(batch)
        with torch.no_grad():
            assert torch.equal(older(batch)["atom14"], newer(batch)["atom14"])
    with torch.no_grad():
        torch.nn.init.normal_(newer.embedding.language[1].weight, std=0.1)
        nanobody, tcr = collate([nanobody_example(nanobody_atoms)]), collate([tcr_example()])
        for batch in (nanobody, tcr):
            batch["language"] = batch_language_features(batch)
        assert (older(nanobody)["atom14"] - newer(nanobody)["atom14"]).abs().max() > 1e-3
        assert torch.equal(older(tcr)["atom14"], newer(tcr)["atom14"])


def test_language_dropout_hides_whole_examples_in_training_only(nanobody_atoms):
    """With language_dropout 1, a training forward pass sees no language features; in eval mode it sees them."""
    torch.manual_seed(0)
    model = ImmunoFoldNet(ModelConfig(**SMALL, language_dim=LANGUAGE_DIM, language_dropout=1.0))
    model.template_atoms.normal_(std=5.0)
    torch.nn.init.normal_(model.embedding.language[1].weight, std=0.1)
    batch = collate([nanobody_example(nanobody_atoms)])
    batch["language"] = batch_language_features(batch)
    without = {**batch, "language": torch.zeros_like(batch["language"])}
    with torch.no_grad():
        model.train()
        assert torch.equal(model(batch)["atom14"], model(without)["atom14"])
        model.eval()
        assert (model(batch)["atom14"] - model(without)["atom14"]).abs().max() > 1e-3
