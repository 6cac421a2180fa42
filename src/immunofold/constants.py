"""Chemical and numbering constants, in one place.

Atom layouts follow the "atom14" convention: per residue type, a fixed list of up to 14
heavy-atom names, backbone first (N, CA, C, O), then side chain in PDB order.
"""

from __future__ import annotations

# --- residue types -------------------------------------------------------------------------
RESTYPES = "ARNDCQEGHILKMFPSTWYV"  # index 0..19; 20 = unknown (X)
UNKNOWN_RESTYPE = 20
NUM_RESTYPES = 21
RESTYPE_INDEX = {aa: i for i, aa in enumerate(RESTYPES)}

ONE_TO_THREE = {
    "A": "ALA", "R": "ARG", "N": "ASN", "D": "ASP", "C": "CYS", "Q": "GLN", "E": "GLU",
    "G": "GLY", "H": "HIS", "I": "ILE", "L": "LEU", "K": "LYS", "M": "MET", "F": "PHE",
    "P": "PRO", "S": "SER", "T": "THR", "W": "TRP", "Y": "TYR", "V": "VAL",
}
THREE_TO_ONE = {v: k for k, v in ONE_TO_THREE.items()}
# Non-standard residues read from structures as their parent amino acid.
MODIFIED_TO_PARENT = {"MSE": "MET", "PCA": "GLU", "SEP": "SER", "TPO": "THR", "HYP": "PRO"}

# --- atom14 layout -------------------------------------------------------------------------
BACKBONE_ATOMS = ("N", "CA", "C", "O")
ATOM14_NAMES: dict[str, tuple[str, ...]] = {
    "ALA": ("N", "CA", "C", "O", "CB"),
    "ARG": ("N", "CA", "C", "O", "CB", "CG", "CD", "NE", "CZ", "NH1", "NH2"),
    "ASN": ("N", "CA", "C", "O", "CB", "CG", "OD1", "ND2"),
    "ASP": ("N", "CA", "C", "O", "CB", "CG", "OD1", "OD2"),
    "CYS": ("N", "CA", "C", "O", "CB", "SG"),
    "GLN": ("N", "CA", "C", "O", "CB", "CG", "CD", "OE1", "NE2"),
    "GLU": ("N", "CA", "C", "O", "CB", "CG", "CD", "OE1", "OE2"),
    "GLY": ("N", "CA", "C", "O"),
    "HIS": ("N", "CA", "C", "O", "CB", "CG", "ND1", "CD2", "CE1", "NE2"),
    "ILE": ("N", "CA", "C", "O", "CB", "CG1", "CG2", "CD1"),
    "LEU": ("N", "CA", "C", "O", "CB", "CG", "CD1", "CD2"),
    "LYS": ("N", "CA", "C", "O", "CB", "CG", "CD", "CE", "NZ"),
    "MET": ("N", "CA", "C", "O", "CB", "CG", "SD", "CE"),
    "PHE": ("N", "CA", "C", "O", "CB", "CG", "CD1", "CD2", "CE1", "CE2", "CZ"),
    "PRO": ("N", "CA", "C", "O", "CB", "CG", "CD"),
    "SER": ("N", "CA", "C", "O", "CB", "OG"),
    "THR": ("N", "CA", "C", "O", "CB", "OG1", "CG2"),
    "TRP": ("N", "CA", "C", "O", "CB", "CG", "CD1", "CD2", "NE1", "CE2", "CE3", "CZ2", "CZ3", "CH2"),
    "TYR": ("N", "CA", "C", "O", "CB", "CG", "CD1", "CD2", "CE1", "CE2", "CZ", "OH"),
    "VAL": ("N", "CA", "C", "O", "CB", "CG1", "CG2"),
}

# Side-chain dihedral angles, each given by its four atoms.
CHI_ATOMS: dict[str, tuple[tuple[str, str, str, str], ...]] = {
    "ALA": (),
    "ARG": (("N", "CA", "CB", "CG"), ("CA", "CB", "CG", "CD"), ("CB", "CG", "CD", "NE"), ("CG", "CD", "NE", "CZ")),
    "ASN": (("N", "CA", "CB", "CG"), ("CA", "CB", "CG", "OD1")),
    "ASP": (("N", "CA", "CB", "CG"), ("CA", "CB", "CG", "OD1")),
    "CYS": (("N", "CA", "CB", "SG"),),
    "GLN": (("N", "CA", "CB", "CG"), ("CA", "CB", "CG", "CD"), ("CB", "CG", "CD", "OE1")),
    "GLU": (("N", "CA", "CB", "CG"), ("CA", "CB", "CG", "CD"), ("CB", "CG", "CD", "OE1")),
    "GLY": (),
    "HIS": (("N", "CA", "CB", "CG"), ("CA", "CB", "CG", "ND1")),
    "ILE": (("N", "CA", "CB", "CG1"), ("CA", "CB", "CG1", "CD1")),
    "LEU": (("N", "CA", "CB", "CG"), ("CA", "CB", "CG", "CD1")),
    "LYS": (("N", "CA", "CB", "CG"), ("CA", "CB", "CG", "CD"), ("CB", "CG", "CD", "CE"), ("CG", "CD", "CE", "NZ")),
    "MET": (("N", "CA", "CB", "CG"), ("CA", "CB", "CG", "SD"), ("CB", "CG", "SD", "CE")),
    "PHE": (("N", "CA", "CB", "CG"), ("CA", "CB", "CG", "CD1")),
    "PRO": (("N", "CA", "CB", "CG"), ("CA", "CB", "CG", "CD")),
    "SER": (("N", "CA", "CB", "OG"),),
    "THR": (("N", "CA", "CB", "OG1"),),
    "TRP": (("N", "CA", "CB", "CG"), ("CA", "CB", "CG", "CD1")),
    "TYR": (("N", "CA", "CB", "CG"), ("CA", "CB", "CG", "CD1")),
    "VAL": (("N", "CA", "CB", "CG1"),),
}
# Atoms whose names swap under a 180-degree flip of the last chi (symmetric side chains).
SYMMETRIC_ATOM_SWAPS: dict[str, tuple[tuple[str, str], ...]] = {
    "ASP": (("OD1", "OD2"),),
    "GLU": (("OE1", "OE2"),),
    "PHE": (("CD1", "CD2"), ("CE1", "CE2")),
    "TYR": (("CD1", "CD2"), ("CE1", "CE2")),
}

# Rigid groups: 0 backbone (N, CA, C, CB), 1 the O atom (rotates with the N-CA-C-O torsion),
# 2..5 chi1..chi4. Torsion slots predicted by the model: 0 = N-CA-C-O, 1..4 = chi1..chi4.
NUM_TORSIONS = 5
NUM_RIGID_GROUPS = 6
GREEK_DEPTH = {"B": 1, "G": 2, "D": 3, "E": 4, "Z": 5, "H": 6}


def rigid_group_of_atom(resname: str, atom: str) -> int:
    """Rigid group index of one atom: the last torsion that moves it."""
    if atom in ("N", "CA", "C", "CB"):
        return 0
    if atom == "O":
        return 1
    depth = GREEK_DEPTH[atom[1]]
    return 1 + min(depth - 1, len(CHI_ATOMS[resname]))


# --- chains and receptors ------------------------------------------------------------------
# Chain classes seen by the model (embedding index).
CHAIN_CLASSES = ("heavy", "kappa", "lambda", "alpha", "beta")
CHAIN_CLASS_INDEX = {c: i for i, c in enumerate(CHAIN_CLASSES)}
# anarcism chain type -> chain class
ANARCI_TO_CHAIN_CLASS = {"H": "heavy", "K": "kappa", "L": "lambda", "A": "alpha", "B": "beta", "D": "alpha"}
KINDS = ("antibody", "nanobody", "tcr")
KIND_INDEX = {k: i for i, k in enumerate(KINDS)}
# Output chain ids per receptor kind, in model order.
KIND_CHAIN_IDS = {"antibody": ("H", "L"), "nanobody": ("H",), "tcr": ("A", "B")}

# --- IMGT regions --------------------------------------------------------------------------
IMGT_MAX_POSITION = 128
NUM_IMGT_POSITIONS = IMGT_MAX_POSITION + 1  # rows of a per-position table: IMGT 1..128, row 0 unused
IMGT_CDRS = {1: (27, 38), 2: (56, 65), 3: (105, 117)}  # inclusive ranges of IMGT positions


def imgt_region(position: int) -> str:
    """'CDR1', 'CDR2', 'CDR3' or 'FR' for an IMGT position number."""
    for k, (lo, hi) in IMGT_CDRS.items():
        if lo <= position <= hi:
            return f"CDR{k}"
    return "FR"


def is_cdr(position, cdr: int):
    """True for IMGT positions inside CDR `cdr` (1, 2 or 3). position [*] (tensor or array) -> [*] bool."""
    lo, hi = IMGT_CDRS[cdr]
    return (position >= lo) & (position <= hi)


def is_framework(position):
    """True for IMGT positions 1-128 outside the three CDRs. position [*] (tensor or array) -> [*] bool."""
    in_cdr = is_cdr(position, 1) | is_cdr(position, 2) | is_cdr(position, 3)
    return ~in_cdr & (position >= 1) & (position <= IMGT_MAX_POSITION)


# Geometry
PEPTIDE_BOND_LENGTH = 1.329  # C(i)-N(i+1), Å (Engh & Huber); the training loss and refinement's check both use it
# What a model must not have (refine.find_problems; the clean-up checks its own result by the same limits):
PEPTIDE_BOND_TOLERANCE = 0.1  # Å around PEPTIDE_BOND_LENGTH; a C(i)-N(i+1) distance outside it is a broken bond
CIS_OMEGA_LIMIT = 30.0  # degrees: |omega| below this is cis
CLASH_CHECK_DISTANCE = 2.0  # Å, non-bonded heavy atoms of different residues closer than this clash
# Bond angles at the peptide bond, degrees (Engh & Huber 1991; medians of the val split's experimental structures:
# 116.4 and 122.2). The clean-up (immunofold.cleanup) holds predicted peptide bonds to them.
CA_C_N_ANGLE = 116.2
C_N_CA_ANGLE = 121.7
N_CA_C_ANGLE = 111.0  # Engh & Huber 1991 (111.2 non-glycine, 112.5 glycine)
O_C_N_ANGLE = 122.7  # Engh & Huber 1991
