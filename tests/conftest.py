"""Shared fixtures: a real nanobody structure (7F5G, val split) committed under tests/fixtures."""

import os

import pytest
import torch

from immunofold.constants import RESTYPE_INDEX
from immunofold.io import read_chains

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures")
NANOBODY_PDB = os.path.join(FIXTURES, "nanobody_7f5g.pdb")
TRASTUZUMAB_HEAVY = (
    "EVQLVESGGGLVQPGGSLRLSCAASGFNIKDTYIHWVRQAPGKGLEWVARIYPTNGYTRYADSVKGRFTISADTSKNTAYLQMNSLRAEDTAVYYCSRWGGDGFYAMDYWGQGTLVTVSS"
)
TRASTUZUMAB_LIGHT = (
    "DIQMTQSPSSLSASVGDRVTITCRASQDVNTAVAWYQQKPGKAPKLLIYSASFLYSGVPSRFSGSRSGTDFTLTISSLQPEDFATYYCQQHYTTPPTFGQGTKVEIK"
)


@pytest.fixture(scope="session")
def nanobody_atoms():
    """(atom14 [N, 14, 3] Å, atom_mask [N, 14], restype [N], sequence) of the 7F5G nanobody."""
    chain = next(iter(read_chains(NANOBODY_PDB).values()))
    atom14 = torch.tensor(chain.atom14, dtype=torch.float32)
    mask = torch.tensor(chain.atom_mask)
    restype = torch.tensor([RESTYPE_INDEX[aa] for aa in chain.sequence])
    return atom14, mask, restype, chain.sequence
