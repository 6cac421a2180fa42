"""benchmarks/precision.py: its bf16/int8 variants run the network, keep frame maths in fp32 where they say so, and
its verdict applies the margins of issue 24 (RMSD +0.01 Å, error Spearman ±0.005)."""

import copy
import os
import sys

import pytest
import torch
from test_network import nanobody_batch, trained_like_model

from immunofold import geometry

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))

import precision  # noqa: E402


def test_verdict_flags_only_changes_beyond_the_margins():
    reference = {"antibody H3": 3.141, "antibody error_spearman": 0.537, "tcr A3 error spearman (across entries)": None}
    assert precision.verdict(reference, {"antibody H3": 3.150, "antibody error_spearman": 0.532}) == []
    assert precision.verdict(reference, {"antibody H3": 3.100, "antibody error_spearman": 0.542}) == []  # better RMSD
    assert precision.verdict(reference, {"antibody H3": 3.152, "antibody error_spearman": 0.537}) == [
        "antibody H3 3.141 -> 3.152 Å"]
    assert precision.verdict(reference, {"antibody H3": 3.141, "antibody error_spearman": 0.543}) == [
        "antibody error_spearman 0.537 -> 0.543"]


def test_fp32_geometry_keeps_rigid_transforms_in_fp32_under_autocast_and_restores_them():
    torch.manual_seed(0)
    frames = geometry.Frames(geometry.quaternion_to_rotation(torch.nn.functional.normalize(torch.randn(5, 4), dim=-1)),
                             30 * torch.randn(5, 3))  # translations of tens of Å, as in a receptor
    points = (10 * torch.randn(5, 3)).bfloat16()  # local points (Å) as a bf16 linear layer gives them
    exact = frames.apply(points.float())

    def rounding(result):  # Å; autocast alone runs the rotation (an einsum) in bf16
        return (result - exact).abs().max()

    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert rounding(frames.apply(points)) > 1e-3
        with precision.fp32_geometry():
            inside = frames.apply(points)
        after = frames.apply(points)
    assert inside.dtype == torch.float32 and rounding(inside) == 0
    assert rounding(after) > 1e-3  # the patch ends with the block


@pytest.mark.parametrize("variant", [v for v in precision.VARIANTS if v != "fp32"])
def test_variant_runs_the_network_in_fp32_outputs_near_fp32(variant, nanobody_atoms):
    model = trained_like_model(pair_dim=8)  # pair features: PairBias reads its to_bias weight directly
    batch = nanobody_batch(nanobody_atoms)
    with torch.inference_mode():
        reference = model(batch)
        output = precision.VARIANTS[variant](copy.deepcopy(model)).eval()(batch)
    assert output["atom14"].dtype == torch.float32 and output["predicted_error"].dtype == torch.float32
    shift = (output["atom14"] - reference["atom14"]).norm(dim=-1).max()
    assert 0 < shift < 3.0, f"{variant}: largest atom shift {shift:.3f} Å from fp32"  # rounding, not a broken model
