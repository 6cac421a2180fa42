"""Ensemble error: spread of superposed members around their mean, member ranking and the consensus structure."""

import pytest
import torch

from immunofold.constants import RESTYPE_INDEX
from immunofold.ensemble import Ensemble, consensus_structure, member_spread, superpose_members
from immunofold.geometry import kabsch, quaternion_to_rotation, residue_tables


def rotated(atom14, seed):
    quat = torch.randn(4, generator=torch.Generator().manual_seed(seed))
    return atom14 @ quaternion_to_rotation(quat / quat.norm()).T + torch.tensor([seed, -seed, 2.0 * seed])


def test_rigidly_moved_copies_have_zero_error(nanobody_atoms):
    atom14 = nanobody_atoms[0]
    members = torch.stack([rotated(atom14, s) for s in range(4)])[:, None]  # [M, B=1, N, 14, 3]
    mask = torch.ones(1, len(atom14), dtype=torch.bool)
    spread, _ = member_spread(superpose_members(members, mask), mask)
    assert spread.max() < 1e-3


def test_a_displaced_loop_gets_the_error_and_the_other_members_are_preferred(nanobody_atoms):
    atom14 = nanobody_atoms[0]
    members = torch.stack([rotated(atom14, s) for s in range(4)])
    loop = slice(100, 110)
    members[2, loop] += torch.tensor([4.0, 0.0, 0.0]) @ torch.eye(3)  # one member disagrees on a loop
    mask = torch.ones(1, len(atom14), dtype=torch.bool)
    spread, ranking = member_spread(superpose_members(members[:, None], mask), mask)
    spread = spread[0]
    outside = torch.ones(len(atom14), dtype=torch.bool)
    outside[loop] = False
    assert spread[loop].min() > 1.0  # about 4 Å * sqrt(3)/4 for one of four members
    assert spread[outside].max() < 0.5
    assert ranking[0, -1] == 2  # the disagreeing member is furthest from the mean


def test_reported_error_combines_spread_and_error_head_in_quadrature():
    from immunofold.ensemble import EnsembleOutput

    output = EnsembleOutput(
        members=torch.zeros(2, 1, 3, 14, 3),
        spread=torch.tensor([[3.0, 0.0, 1.0]]),
        head_error=torch.tensor([[4.0, 2.0, 0.0]]),
        ranking=torch.tensor([[0, 1]]),
        consensus=torch.zeros(1, 3, 14, 3),
    )
    assert torch.allclose(output.error, torch.tensor([[5.0, 2.0, 1.0]]))


def backbone_rmsd(a, b):
    """RMSD (Å) of N, CA, C after superposition; a, b [N, 14, 3]."""
    a, b = a[:, :3].reshape(-1, 3), b[:, :3].reshape(-1, 3)
    moved = kabsch(a, b, torch.ones(len(a))).apply(a)
    return float(((moved - b) ** 2).sum(-1).mean().sqrt())


def test_consensus_of_identical_members_is_the_structure_with_ideal_geometry(nanobody_atoms):
    atom14, mask, restype, _ = nanobody_atoms
    members = torch.stack([rotated(atom14, s) for s in range(4)])[:, None]
    residue_mask = torch.ones(1, len(atom14), dtype=torch.bool)
    members = superpose_members(members, residue_mask)
    consensus = consensus_structure(members, restype[None], residue_mask)[0]
    assert backbone_rmsd(consensus, members[0, 0]) < 0.1
    exists = residue_tables().atom_exists[restype] & mask
    side_chain_error = (consensus - members[0, 0]).norm(dim=-1)[exists]
    assert side_chain_error.mean() < 0.2  # rebuilt from the same torsions with ideal bond geometry


def test_consensus_lies_between_disagreeing_members_and_keeps_bond_lengths(nanobody_atoms):
    atom14, _, restype, _ = nanobody_atoms
    members = torch.stack([atom14.clone() for _ in range(4)])
    loop = slice(100, 110)
    members[:2, loop] += torch.tensor([2.0, 0.0, 0.0])  # two members put a loop 2 Å one way,
    members[2:, loop] -= torch.tensor([2.0, 0.0, 0.0])  # two the other way
    residue_mask = torch.ones(1, len(atom14), dtype=torch.bool)
    consensus = consensus_structure(members[:, None], restype[None], residue_mask)[0]
    assert (consensus[loop, 1] - atom14[loop, 1]).norm(dim=-1).max() < 0.2  # the loop's CAs at the midpoint
    n_ca = (consensus[:, 1] - consensus[:, 0]).norm(dim=-1)
    ca_c = (consensus[:, 2] - consensus[:, 1]).norm(dim=-1)
    assert (n_ca - 1.46).abs().max() < 0.03 and (ca_c - 1.52).abs().max() < 0.03


def test_consensus_side_chain_ignores_how_members_name_symmetric_atoms(nanobody_atoms):
    atom14, mask, restype, _ = nanobody_atoms
    asp = int((restype == RESTYPE_INDEX["D"]).nonzero()[0])
    flipped = atom14.clone()
    flipped[asp, [6, 7]] = atom14[asp, [7, 6]]  # OD1 <-> OD2: the same structure, the other naming
    members = torch.stack([atom14, flipped, atom14, flipped])[:, None]
    residue_mask = torch.ones(1, len(atom14), dtype=torch.bool)
    consensus = consensus_structure(members, restype[None], residue_mask)[0]
    oxygens = {tuple(x) for x in consensus[asp, 6:8].round(decimals=0).tolist()}
    truth = {tuple(x) for x in atom14[asp, 6:8].round(decimals=0).tolist()}
    assert oxygens == truth  # both oxygens where they are, not collapsed onto the CG-CB axis


def test_members_run_side_by_side_give_the_same_outputs_in_member_order(nanobody_atoms):
    from immunofold.data.features import collate, featurise
    from immunofold.model.network import ImmunoFoldNet, ModelConfig
    from immunofold.sequences import number_chain

    batch = collate([featurise("nanobody", [number_chain(nanobody_atoms[3], "7f5g")])])
    ensemble = Ensemble.__new__(Ensemble)  # three small, different random members; no weight files needed
    ensemble.device = torch.device("cpu")
    ensemble.members_side_by_side = True
    ensemble.models = []
    for seed in range(3):
        torch.manual_seed(seed)
        model = ImmunoFoldNet(ModelConfig(dim=32, trunk_layers=1, ipa_blocks=1, ipa_heads=4, trunk_heads=4)).eval()
        model.template_atoms.normal_(std=5.0)
        torch.nn.init.normal_(model.blocks[0].frame_update.weight, std=0.05)
        ensemble.models.append(model)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one_by_one = ensemble.forward_members(batch, ensemble.models)
        torch.set_num_threads(2)
        side_by_side = ensemble.forward_members(batch, ensemble.models)
        assert torch.get_num_threads() == 2  # restored after the members ran
    finally:
        torch.set_num_threads(threads)
    for serial, parallel in zip(one_by_one, side_by_side, strict=True):
        assert torch.allclose(serial["atom14"], parallel["atom14"], atol=1e-5)
    assert not torch.allclose(one_by_one[0]["atom14"], one_by_one[1]["atom14"])  # members differ: order matters


def small_member_files(folder, seeds) -> list[str]:
    """Weight files of small random members (one per seed) in `folder`, as m<seed>.safetensors."""
    from immunofold.model.network import ImmunoFoldNet, ModelConfig
    from immunofold.weights import save_weights

    config = dict(dim=32, trunk_layers=1, ipa_blocks=1, ipa_heads=4, trunk_heads=4)
    paths = []
    for seed in seeds:
        torch.manual_seed(seed)
        model = ImmunoFoldNet(ModelConfig(**config)).eval()
        model.template_atoms.normal_(std=5.0)
        torch.nn.init.normal_(model.blocks[0].frame_update.weight, std=0.05)
        paths.append(str(folder / f"m{seed}.safetensors"))
        save_weights(model, paths[-1], {"config": {"model": config}, "release": "test"})
    return paths


def test_each_receptor_kind_runs_the_members_its_weights_folder_names(tmp_path, nanobody_atoms):
    import json

    import pytest

    from immunofold.constants import KIND_INDEX, KINDS
    from immunofold.data.features import collate, featurise
    from immunofold.sequences import number_chain
    from immunofold.weights import MEMBERS_FILE, folder_member_sets

    paths = small_member_files(tmp_path, range(3))
    assert folder_member_sets(str(tmp_path)) == {kind: paths for kind in KINDS}  # no members file: all serve all
    names = {"antibody": ["m0.safetensors", "m1.safetensors", "m2.safetensors"],
             "nanobody": ["m2.safetensors", "m0.safetensors"], "tcr": ["m1.safetensors", "m2.safetensors"]}
    (tmp_path / MEMBERS_FILE).write_text(json.dumps(names))
    sets = folder_member_sets(str(tmp_path))
    ensemble = Ensemble(sets)
    assert len(ensemble.models) == 3  # each file loaded once, whichever kinds use it
    assert ensemble.version != Ensemble(paths).version  # which members serve which kind is part of the version

    features = featurise("nanobody", [number_chain(nanobody_atoms[3], "7f5g")])
    output = ensemble.run(collate([features]))
    alone = Ensemble([paths[2], paths[0]]).run(collate([features]))
    assert output.members.shape[0] == 2
    assert torch.allclose(output.members, alone.members) and torch.allclose(output.consensus, alone.consensus)

    mixed = collate([features, features])
    mixed["kind"][1] = KIND_INDEX["tcr"]
    with pytest.raises(ValueError, match="one receptor kind"):
        ensemble.run(mixed)
    del names["tcr"]
    (tmp_path / MEMBERS_FILE).write_text(json.dumps(names))
    with pytest.raises(ValueError, match="no ensemble members for tcr"):
        folder_member_sets(str(tmp_path))


@pytest.mark.parametrize(
    "members, words",
    [
        ('{"antibody": ["m0.safetensors"], "nanobody": "m0.safetensors", "tcr": ["m0.safetensors"]}', "nanobody: expected a list of file names"),
        ('{"antibody": ["m0.safetensors"], "nanobody": [1], "tcr": ["m0.safetensors"]}', "nanobody: expected a list of file names"),
        ('{"antibody": ["m0.safetensors"], "nanobody": ["m0.safetensors"], "tcr": ["/etc/m0.safetensors"]}', "tcr: expected a list of file names"),
        ('{"antibody": ["m0.safetensors"], "nanobody": ["m0.safetensors"], "tcr": ["nope.safetensors"]}', "tcr: nope.safetensors is not a file in"),
        ('{"antibody": ["m0.safetensors"], "nanobody": ["m0.safetensors"], "tcr": []}', "no ensemble members for tcr"),
        ('{"antibody": ["m0.safetensors"], "nanobody": ["m0.safetensors"], "tcr": ["m0.safetensors"], "TCR": []}', "unknown receptor kind 'TCR'"),
        ('["m0.safetensors"]', "not a JSON object"),
        ('{"antibody": ', "not JSON"),
        (None, "Is a directory"),
    ],
)
def test_a_malformed_members_file_is_one_line_naming_it(tmp_path, members, words):
    from immunofold.weights import MEMBERS_FILE, WeightsError, folder_member_sets

    small_member_files(tmp_path, [0])
    manifest = tmp_path / MEMBERS_FILE
    manifest.mkdir() if members is None else manifest.write_text(members)
    with pytest.raises(WeightsError) as error:
        folder_member_sets(str(tmp_path))
    message = str(error.value)
    assert message.startswith(f"{manifest}: ") and words in message and "\n" not in message


def test_a_damaged_member_file_is_one_line_naming_it(tmp_path):
    from immunofold.weights import WeightsError

    damaged = tmp_path / "m.safetensors"
    damaged.write_bytes(b"not a safetensors file")
    with pytest.raises(WeightsError, match=f"^{damaged}: not a readable immunofold weights file"):
        Ensemble([str(damaged)])
    with pytest.raises(WeightsError, match=f"^{tmp_path / 'absent.safetensors'}: no such file$"):
        Ensemble([str(tmp_path / "absent.safetensors")])
