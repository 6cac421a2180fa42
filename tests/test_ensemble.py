"""Ensemble error: spread of superposed members around their mean, and the member choice."""

import torch

from immunofold.ensemble import member_spread, superpose_members
from immunofold.geometry import quaternion_to_rotation


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
    )
    assert torch.allclose(output.error, torch.tensor([[5.0, 2.0, 1.0]]))
