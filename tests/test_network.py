import torch

from immunofold.data.features import collate, featurise
from immunofold.model.network import ImmunoFoldNet, ModelConfig
from immunofold.sequences import number_chain


def test_structure_passes_reuse_the_block_weights_and_refine_further(nanobody_atoms):
    """A second pass through the IPA stack adds no parameters (weights of a one-pass model load unchanged) and moves atoms."""
    example = featurise("nanobody", [number_chain(nanobody_atoms[3], "7f5g")])
    batch = collate([example])
    small = dict(dim=32, trunk_layers=1, ipa_blocks=2, ipa_heads=4, trunk_heads=4)
    torch.manual_seed(0)
    one_pass = ImmunoFoldNet(ModelConfig(**small)).eval()
    one_pass.template_atoms.normal_(std=5.0)  # start frames (Å): any non-degenerate backbone will do
    for block in one_pass.blocks:  # frame updates start at zero; a trained model moves its frames
        torch.nn.init.normal_(block.frame_update.weight, std=0.05)
    two_passes = ImmunoFoldNet(ModelConfig(**small, structure_passes=2)).eval()
    two_passes.load_state_dict(one_pass.state_dict())  # strict: the same parameter names and shapes

    with torch.no_grad():
        out_one, out_two = one_pass(batch), two_passes(batch)
    assert len(out_one["frames"]) == 2 and len(out_two["frames"]) == 4
    assert torch.allclose(out_two["frames"][1].trans, out_one["frames"][1].trans)  # the first pass is the one-pass model
    assert (out_two["atom14"] - out_one["atom14"]).abs().max() > 1e-3
