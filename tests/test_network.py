import torch

from immunofold.data.features import collate, featurise
from immunofold.model.network import ImmunoFoldNet, ModelConfig
from immunofold.sequences import number_chain

SMALL = dict(dim=32, trunk_layers=1, ipa_blocks=2, ipa_heads=4, trunk_heads=4)  # a model small enough for a test


def nanobody_batch(nanobody_atoms) -> dict:
    """The 7F5G nanobody as a batch of one."""
    return collate([featurise("nanobody", [number_chain(nanobody_atoms[3], "7f5g")])])


def trained_like_model(**config) -> ImmunoFoldNet:
    """A small seeded model (eval mode) whose frames start from a non-degenerate backbone and move, as a trained one's do."""
    torch.manual_seed(0)
    model = ImmunoFoldNet(ModelConfig(**SMALL, **config)).eval()
    model.template_atoms.normal_(std=5.0)  # start frames (Å): any non-degenerate backbone will do
    for block in model.blocks:  # frame updates start at zero; a trained model moves its frames
        torch.nn.init.normal_(block.frame_update.weight, std=0.05)
    return model


def test_structure_passes_reuse_the_block_weights_and_refine_further(nanobody_atoms):
    """A second pass through the IPA stack adds no parameters (weights of a one-pass model load unchanged) and moves atoms."""
    batch = nanobody_batch(nanobody_atoms)
    one_pass = trained_like_model()
    two_passes = ImmunoFoldNet(ModelConfig(**SMALL, structure_passes=2)).eval()
    two_passes.load_state_dict(one_pass.state_dict())  # strict: the same parameter names and shapes

    with torch.no_grad():
        out_one, out_two = one_pass(batch), two_passes(batch)
    assert len(out_one["frames"]) == 2 and len(out_two["frames"]) == 4
    assert torch.allclose(out_two["frames"][1].trans, out_one["frames"][1].trans)  # the first pass is the one-pass model
    assert (out_two["atom14"] - out_one["atom14"]).abs().max() > 1e-3


def test_cysteine_pair_bias_reaches_only_cysteine_pairs_and_loads_over_older_weights(nanobody_atoms):
    """The cysteine-pair bias starts at zero (a model started from older weights predicts as they did), changes the
    attention only between two different cysteines, and older weights load into it with just the new biases missing."""
    from immunofold.constants import RESTYPE_INDEX
    from immunofold.model.layers import CYSTEINE_BIAS_SCALE, attention_biases, cysteine_pairs, relative_position_buckets
    from immunofold.train.loop import load_init_weights

    batch = nanobody_batch(nanobody_atoms)
    older = trained_like_model()
    newer = ImmunoFoldNet(ModelConfig(**SMALL, cysteine_pair_bias=True)).eval()
    added = load_init_weights(newer, older.state_dict())
    assert sorted(added) == ["blocks.0.ipa.bias.cysteine", "blocks.1.ipa.bias.cysteine", "trunk.0.bias.cysteine"]
    with torch.no_grad():
        assert torch.equal(older(batch)["atom14"], newer(batch)["atom14"])

    is_cysteine = batch["restype"] == RESTYPE_INDEX["C"]
    pairs = cysteine_pairs(is_cysteine)  # [1, N, N]
    assert int(is_cysteine.sum()) >= 2 and int(pairs.sum()) == int(is_cysteine.sum()) * (int(is_cysteine.sum()) - 1)
    assert not pairs[0].diagonal().any()
    modules = [newer.trunk[0].bias]
    with torch.no_grad():
        modules[0].cysteine.copy_(torch.arange(1.0, 5.0))
    buckets = relative_position_buckets(batch["chain_slot"])
    with_pairs = attention_biases(modules, buckets, batch["residue_mask"], pairs)[0]
    without = attention_biases(modules, buckets, batch["residue_mask"])[0]
    difference = with_pairs - without  # [1, H, N, N]
    expected = CYSTEINE_BIAS_SCALE * torch.arange(1.0, 5.0)[:, None].expand(4, int(pairs.sum()))
    assert torch.equal(difference[0, :, pairs[0]], expected)
    assert (difference[0, :, ~pairs[0]] == 0).all()


def test_init_weights_must_fit_apart_from_zero_initialised_additions():
    import pytest

    from immunofold.train.loop import load_init_weights

    model = ImmunoFoldNet(ModelConfig(**{**SMALL, "ipa_blocks": 1}))
    state = model.state_dict()
    del state["trunk.0.qkv.weight"]
    with pytest.raises(ValueError, match="trunk.0.qkv.weight"):
        load_init_weights(model, state)


def test_pair_bias_starts_with_no_effect_and_then_steers_the_structure(nanobody_atoms):
    """A model with pair features (pair_dim > 0) started from older weights predicts as they did; once its bias readout
    is non-zero the atoms move, and the features depend on both residues (not a per-residue bias)."""
    from immunofold.model.layers import relative_position_buckets
    from immunofold.train.loop import load_init_weights

    batch = nanobody_batch(nanobody_atoms)
    older = trained_like_model()
    newer = ImmunoFoldNet(ModelConfig(**SMALL, pair_dim=8)).eval()
    added = load_init_weights(newer, older.state_dict())
    assert added and all(name.startswith("pair_bias.") for name in added)
    with torch.no_grad():
        assert torch.equal(older(batch)["atom14"], newer(batch)["atom14"])
        torch.nn.init.normal_(newer.pair_bias.to_bias.weight, std=1.0)
        assert (newer(batch)["atom14"] - older(batch)["atom14"]).abs().max() > 1e-3
        s = torch.randn(1, 6, 32)
        zeros = [torch.zeros(1, 4, 6, 6), torch.zeros(1, 4, 6, 6)]
        biases = newer.pair_bias(s, relative_position_buckets(torch.zeros(1, 6, dtype=torch.long)), zeros)
    assert len(biases) == 2 and biases[0].shape == (1, 4, 6, 6)
    rows_minus_row_mean = biases[0] - biases[0].mean(-1, keepdim=True)
    assert rows_minus_row_mean.abs().max() > 1e-3  # within a query row, keys get different biases


def test_pair_bias_at_inference_matches_the_training_computation():
    """Without gradients PairBias works through the query rows in chunks, adding into the given biases in place;
    the biases must be the same."""
    from immunofold.model.layers import PAIR_ROWS, PairBias, relative_position_buckets

    torch.manual_seed(0)
    module = PairBias(dim=32, pair_dim=8, num_heads=4, num_targets=2)
    torch.nn.init.normal_(module.to_bias.weight)
    length = 2 * PAIR_ROWS + 5  # chunks of PAIR_ROWS rows and a shorter last one
    s = torch.randn(2, length, 32)
    buckets = relative_position_buckets((torch.arange(length) >= 20).long().expand(2, length))
    relative = torch.randn(2, 2 * 4, length, length)  # the biases the pair terms are added to, as attention_biases'
    trained = module(s, buckets, list(relative.split(4, dim=1)))  # gradients on: the whole [B, N, N, P] tensor at once
    with torch.inference_mode():
        inferred = module(s, buckets, list(relative.clone().split(4, dim=1)))  # in place, chunk by chunk
    for a, b in zip(trained, inferred):
        assert a.shape == b.shape == (2, 4, length, length)
        assert torch.allclose(a, b, atol=1e-5)
    assert not torch.allclose(trained[0], relative[:, :4], atol=1e-3)  # the pair terms are there


def test_distogram_head_runs_in_training_only_on_sampled_rows(nanobody_atoms):
    from immunofold.model.layers import DISTOGRAM_ROWS

    batch = nanobody_batch(nanobody_atoms)
    model = trained_like_model(distogram_bins=16)
    assert "distogram_logits" not in model(batch)  # inference does not pay for it
    output = model.train()(batch)
    n = batch["restype"].shape[1]
    assert output["distogram_logits"].shape == (1, DISTOGRAM_ROWS, n, 16)
    assert len(set(output["distogram_rows"].tolist())) == DISTOGRAM_ROWS  # distinct residues


LONG_CDR3_NANOBODY = (  # 1F2X, a 21-residue CDR3
    "QVQLVESGGGSVQAGGSLRLSCAASGYTVSTYCMGWFRQAPGKEREGVATILGGSTYYGDSVKGRFTISQDNAKNTVYLQMNSLKPEDTAIYYCAGSTVASTGWCSRLRPYD"
    "YHYRGQGTQVTVSS"
)


def test_cdr3_class_head_reads_the_first_chains_cdr3_and_needs_no_structure_module(nanobody_atoms):
    batch = nanobody_batch(nanobody_atoms)
    assert "cdr3_class_logit" not in trained_like_model()(batch)  # off unless configured
    model = trained_like_model(cdr3_class_head=True)
    logit = model(batch)["cdr3_class_logit"]
    assert logit.shape == (1,)
    torch.testing.assert_close(model.sequence_only_cdr3_class_logit(batch), logit)
    # padding (a longer receptor in the batch) does not change it; a CDR3 residue's type does
    padded = collate([featurise("nanobody", [number_chain(nanobody_atoms[3], "7f5g")]),
                      featurise("nanobody", [number_chain(LONG_CDR3_NANOBODY, "1f2x")])])
    assert padded["residue_mask"].shape[1] > batch["residue_mask"].shape[1]
    torch.testing.assert_close(model.sequence_only_cdr3_class_logit(padded)[0], logit[0])
    in_cdr3 = ((batch["imgt_position"] >= 105) & (batch["imgt_position"] <= 117))[0].nonzero()[:, 0]
    mutated = {k: v.clone() for k, v in batch.items()}
    mutated["restype"][0, in_cdr3[len(in_cdr3) // 2]] = (mutated["restype"][0, in_cdr3[len(in_cdr3) // 2]] + 1) % 20
    assert not torch.allclose(model.sequence_only_cdr3_class_logit(mutated), logit)
