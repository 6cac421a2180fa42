"""Structure input/output through gemmi: atom14 arrays <-> PDB / mmCIF files.

Coordinates are in Å. A chain is held as atom14 arrays (`constants.ATOM14_NAMES` order) plus
its residue numbering (number, insertion code), so author numbering such as IMGT's 111A
survives a round trip. The B-factor column carries one value per residue (our per-residue
error estimate, Å), written to every atom of that residue.

Free-text remarks are stored as `REMARK 250` lines in PDB files and as a
`_database_PDB_remark` loop (id 250) in mmCIF files.
"""

from __future__ import annotations

import os
import tempfile
import textwrap
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import gemmi
import numpy as np

from immunofold.constants import ATOM14_NAMES, BACKBONE_ATOMS, MODIFIED_TO_PARENT, ONE_TO_THREE, THREE_TO_ONE

REMARK_NUMBER = 250
REMARK_TEXT_WIDTH = 80 - len("REMARK 250 ")
UNKNOWN_RESIDUE = "UNK"
# Atoms of modified residues that play the part of a parent atom, e.g. selenium in MSE.
MODIFIED_ATOM_TO_PARENT_ATOM = {("MSE", "SE"): "SD"}
STRUCTURE_FORMATS = ("pdb", "cif")
FORMAT_BY_SUFFIX = {".pdb": "pdb", ".ent": "pdb", ".cif": "cif", ".mmcif": "cif"}


@dataclass
class ChainAtoms:
    """One protein chain as atom14 arrays.

    chain_id: chain identifier, e.g. "H", "L", "A", "B".
    sequence: one-letter sequence, length N ("X" for unknown residues).
    residue_ids: (number, insertion code or "") per residue, e.g. (111, "A").
    atom14: [N, 14, 3] coordinates, Å, atom order of `constants.ATOM14_NAMES`.
    atom_mask: [N, 14] bool, which atoms exist.
    bfactor: [N] per-residue value written to every atom's B-factor column (Å).
    """

    chain_id: str
    sequence: str
    residue_ids: list[tuple[int, str]]
    atom14: np.ndarray
    atom_mask: np.ndarray
    bfactor: np.ndarray


def atom14_names(resname: str) -> tuple[str, ...]:
    """Atom14 names of a residue type; backbone only for unknown residues."""
    return ATOM14_NAMES.get(resname, BACKBONE_ATOMS)


def _make_residue(resname: str, residue_id: tuple[int, str], coords: np.ndarray,
                  mask: np.ndarray, bfactor: float) -> gemmi.Residue:
    """A gemmi residue from one atom14 slice: coords [14, 3] Å, mask [14]."""
    residue = gemmi.Residue()
    residue.name = resname
    residue.seqid = gemmi.SeqId(int(residue_id[0]), residue_id[1] or " ")
    residue.het_flag = "A"
    rounded = np.round(coords.astype(float), 3).tolist()  # one call per residue: this is on the batch hot path
    for slot, name in enumerate(atom14_names(resname)):
        if not mask[slot]:
            continue
        atom = gemmi.Atom()
        atom.name = name
        atom.element = gemmi.Element(name[0])  # atom14 names start with their element (C, N, O, S)
        atom.pos = gemmi.Position(*rounded[slot])
        atom.occ = 1.0
        atom.b_iso = float(bfactor)
        residue.add_atom(atom)
    return residue


DISULFIDE_MAX_DISTANCE = 2.5  # Å; cysteine SG pairs closer than this are recorded as disulfide bonds


def finish_structure(structure: gemmi.Structure, remarks: list[str] = ()) -> gemmi.Structure:
    """Make a one-model structure complete for PDB and mmCIF readers, in place: each chain one polymer entity with
    its full sequence and label_seq_id numbering (label_asym_id = the chain id), disulfide bonds as connections
    (PDB SSBOND, mmCIF _struct_conn: tools that do not infer bonds from distances need them), and `remarks` as
    REMARK 250 text. Returns the structure."""
    for chain in structure[0]:
        for residue in chain:
            residue.subchain = chain.name  # mmCIF label_asym_id
            residue.entity_type = gemmi.EntityType.Polymer
    structure.setup_entities()
    for entity in structure.entities:
        entity.full_sequence = [residue.name for residue in structure[0].get_subchain(entity.subchains[0])]
    structure.assign_label_seq_id(force=True)
    _add_disulfide_bonds(structure)
    structure.raw_remarks = [
        f"REMARK {REMARK_NUMBER} {line}".ljust(80)
        for remark in remarks
        for line in textwrap.wrap(ascii_text(remark), REMARK_TEXT_WIDTH, break_on_hyphens=False) or [""]
    ]
    return structure


ASCII_SPELLINGS = {"°": " deg", "Å": "A", "α": "alpha", "β": "beta", "±": "+/-"}


def ascii_text(text: str) -> str:
    """`text` in ASCII, as PDB and CIF 1.1 files must be: units and Greek letters spelled out, other characters
    dropped."""
    for character, spelling in ASCII_SPELLINGS.items():
        text = text.replace(character, spelling)
    return text.encode("ascii", "ignore").decode()


def _add_disulfide_bonds(structure: gemmi.Structure) -> None:
    """A disulfide connection for every pair of cysteine SG atoms closer than DISULFIDE_MAX_DISTANCE."""
    model = structure[0]
    sulfurs = [(chain, residue, atom) for chain in model for residue in chain if residue.name == "CYS"
               for atom in residue if atom.name == "SG"]
    structure.connections.clear()
    for i, (chain_a, residue_a, atom_a) in enumerate(sulfurs):
        for chain_b, residue_b, atom_b in sulfurs[i + 1:]:
            if atom_a.pos.dist(atom_b.pos) < DISULFIDE_MAX_DISTANCE:
                bond = gemmi.Connection()
                bond.name = f"disulf{len(structure.connections) + 1}"
                bond.type = gemmi.ConnectionType.Disulf
                bond.partner1 = gemmi.make_address(chain_a, residue_a, atom_a)
                bond.partner2 = gemmi.make_address(chain_b, residue_b, atom_b)
                structure.connections.append(bond)


def build_structure(chains: list[ChainAtoms], remarks: list[str] = ()) -> gemmi.Structure:
    """A one-model gemmi structure from atom14 chains, with `remarks` as REMARK 250 text (`finish_structure`)."""
    model = gemmi.Model(1)
    for chain_atoms in chains:
        chain = gemmi.Chain(chain_atoms.chain_id)
        for i, letter in enumerate(chain_atoms.sequence):
            resname = ONE_TO_THREE.get(letter, UNKNOWN_RESIDUE)
            chain.add_residue(_make_residue(resname, chain_atoms.residue_ids[i], chain_atoms.atom14[i],
                                            chain_atoms.atom_mask[i], chain_atoms.bfactor[i]))
        model.add_chain(chain)
    structure = gemmi.Structure()
    structure.add_model(model)
    return finish_structure(structure, remarks)


def to_pdb_string(structure: gemmi.Structure) -> str:
    """PDB text: REMARK lines, ATOM records with serial numbers and elements, TER per chain, END."""
    options = gemmi.PdbWriteOptions()
    options.cryst1_record = False
    options.ter_records = True
    return structure.make_pdb_string(options)


def _remark_texts(structure: gemmi.Structure) -> list[str]:
    """Text of the structure's REMARK 250 lines."""
    prefix = f"REMARK {REMARK_NUMBER} "
    return [line[len(prefix):].rstrip() for line in structure.raw_remarks if line.startswith(prefix)]


def to_cif_string(structure: gemmi.Structure) -> str:
    """mmCIF text; REMARK 250 lines are kept as a `_database_PDB_remark` loop (id 250)."""
    groups = gemmi.MmcifOutputGroups(True)
    groups.cell = False
    groups.symmetry = False
    groups.auth_all = True  # auth_comp_id, auth_atom_id: some readers (Biotite) warn without them
    document = structure.make_mmcif_document(groups)
    _complete_polymer_records(document.sole_block())
    texts = _remark_texts(structure)
    if texts:
        loop = document.sole_block().init_loop("_database_PDB_remark.", ["id", "text"])
        for text in texts:
            loop.add_row([str(REMARK_NUMBER), gemmi.cif.quote(text)])
    return document.as_string()


def _complete_polymer_records(block: gemmi.cif.Block) -> None:
    """Fill what gemmi leaves empty for a model without a chemical component dictionary: each residue type's
    `_chem_comp.type` (the CCD's: glycine 'peptide linking', the other amino acids 'L-peptide linking') and the
    canonical one-letter sequence of each polymer (`_entity_poly.pdbx_seq_one_letter_code_can`; standard residues
    only, so the same as the one-letter code)."""
    components = block.get_mmcif_category("_chem_comp.", raw=True)
    if components:
        components["type"] = [gemmi.cif.quote("peptide linking" if name == "GLY" else "L-peptide linking")
                              for name in components["id"]]
        block.set_mmcif_category("_chem_comp.", components, raw=True)
    polymers = block.get_mmcif_category("_entity_poly.", raw=True)
    if polymers and "pdbx_seq_one_letter_code" in polymers:
        polymers["pdbx_seq_one_letter_code_can"] = list(polymers["pdbx_seq_one_letter_code"])
        block.set_mmcif_category("_entity_poly.", polymers, raw=True)


def write_structure(structure: gemmi.Structure, path: str | os.PathLike, fmt: str | None = None) -> None:
    """Write `structure` as fmt "pdb" or "cif" (default: from the suffix .pdb/.cif/.mmcif), atomically."""
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"{path} is a folder; give a file name such as {path / 'model.pdb'}")
    implied = FORMAT_BY_SUFFIX.get(path.suffix.lower())
    if fmt is not None and fmt not in STRUCTURE_FORMATS:
        raise ValueError(f"fmt={fmt!r}: give 'pdb' or 'cif'")
    if fmt is not None and implied is not None and implied != fmt:
        raise ValueError(f"{path} ends in {path.suffix} but fmt is {fmt!r}; name it {path.with_suffix('.' + fmt)}")
    fmt = fmt or implied
    if fmt not in STRUCTURE_FORMATS:
        raise ValueError(f"{path}: cannot tell the format; give fmt='pdb' or 'cif'")
    write_text_atomic(path, to_pdb_string(structure) if fmt == "pdb" else to_cif_string(structure))


_UMASK = os.umask(0)  # read once: os.umask can only be read by setting it
os.umask(_UMASK)


@contextmanager
def atomic_output(path: str | os.PathLike) -> Iterator[str]:
    """A temporary path beside `path` to write to; renamed onto `path` when the block succeeds, removed when it
    fails, so no half-written file ever carries the final name. The file gets the user's umask, as open() does;
    a symbolic link is written through (its target gets the new file), as a shell redirect would."""
    path = os.fspath(path)
    if os.path.islink(path):
        path = os.path.realpath(path)
    handle, temp_path = tempfile.mkstemp(dir=os.path.dirname(path) or ".", prefix=f".{os.path.basename(path)}.", suffix=".tmp")
    os.close(handle)
    try:
        os.chmod(temp_path, 0o666 & ~_UMASK)
        yield temp_path
        os.replace(temp_path, path)
    except BaseException:
        if os.path.exists(temp_path):
            os.unlink(temp_path)
        raise


def prepare_output_folder(folder: str | os.PathLike) -> bool:
    """Make sure files can be written into `folder`, creating it if needed; returns True if it was created.

    Raises OSError (with the folder in its message) when it is not a folder or cannot be written to; the check
    writes and removes a temporary file, so it holds for root and for read-only file systems alike."""
    folder = os.fspath(folder) or "."
    created = not os.path.exists(folder)
    if created:
        try:
            os.makedirs(folder)
        except OSError as error:
            raise OSError(f"cannot create folder {folder} ({error.strerror or error})") from None
    elif not os.path.isdir(folder):
        raise NotADirectoryError(f"{folder} is a file, not a folder")
    try:
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as error:
        raise PermissionError(f"cannot write into folder {folder} ({error.strerror or error})") from None
    return created


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Write `text` to `path` through `atomic_output`."""
    with atomic_output(path) as temp_path, open(temp_path, "w", newline="") as handle:
        handle.write(text)


def _read_gemmi_structure(path_or_string: str | os.PathLike) -> tuple[gemmi.Structure, str]:
    """(structure, label for error messages) from a file path or PDB/mmCIF text."""
    if isinstance(path_or_string, str) and "\n" in path_or_string:
        label = "<string>"
        try:
            if path_or_string.lstrip().startswith("data_"):
                block = gemmi.cif.read_string(path_or_string).sole_block()
                return gemmi.make_structure_from_block(block), label
            return gemmi.read_pdb_string(path_or_string), label
        except (RuntimeError, ValueError) as error:
            raise ValueError(f"{label}: cannot parse: {error}") from error
    label = str(path_or_string)
    if not os.path.exists(label):
        raise FileNotFoundError(label)
    try:
        return gemmi.read_structure(label), label
    except (RuntimeError, ValueError) as error:
        raise ValueError(f"{label}: cannot parse: {error}") from error


def _parent_residue_name(residue: gemmi.Residue) -> str | None:
    """Standard amino-acid name of a residue (modified ones mapped), or None to skip it."""
    name = MODIFIED_TO_PARENT.get(residue.name, residue.name)
    if name in ATOM14_NAMES or name == UNKNOWN_RESIDUE:
        return name
    return None


def _chain_atoms(chain: gemmi.Chain) -> ChainAtoms | None:
    """Atom14 arrays of a chain's amino-acid residues; None if it has none."""
    sequence, residue_ids, coords, masks, bfactors = [], [], [], [], []
    for residue in chain:
        resname = _parent_residue_name(residue)
        if resname is None:
            continue
        slots = {name: i for i, name in enumerate(atom14_names(resname))}
        xyz = np.zeros((14, 3), np.float32)
        mask = np.zeros(14, bool)
        atom_b = []
        for atom in residue:
            name = MODIFIED_ATOM_TO_PARENT_ATOM.get((residue.name, atom.name), atom.name)
            slot = slots.get(name)
            if slot is None or atom.is_hydrogen():
                continue
            xyz[slot] = atom.pos.tolist()
            mask[slot] = True
            atom_b.append(atom.b_iso)
        sequence.append(THREE_TO_ONE.get(resname, "X"))
        residue_ids.append((residue.seqid.num, residue.seqid.icode.strip()))
        coords.append(xyz)
        masks.append(mask)
        bfactors.append(np.mean(atom_b) if atom_b else 0.0)
    if not sequence:
        return None
    return ChainAtoms(chain.name, "".join(sequence), residue_ids, np.stack(coords), np.stack(masks),
                      np.asarray(bfactors, np.float32))


def read_chains(path_or_string: str | os.PathLike,
                chain_ids: list[str] | None = None) -> dict[str, ChainAtoms]:
    """Protein chains of the first model, as {chain_id: ChainAtoms} in file order.

    Reads .pdb, .cif, .mmcif (optionally .gz) files, or PDB/mmCIF text. Keeps heavy atoms of the
    atom14 layout (first altloc), maps modified residues to their parent (MSE SE -> SD) and skips
    waters, ligands and other non-amino-acid residues. Missing atoms have mask False.
    Raises ValueError("<path>: <reason>") for an unreadable or empty file or an unknown chain.
    """
    structure, label = _read_gemmi_structure(path_or_string)
    if len(structure) == 0:
        raise ValueError(f"{label}: no models (empty or not a structure file)")
    structure.remove_alternative_conformations()
    structure.merge_chain_parts()
    chains = {}
    for chain in structure[0]:
        chain_atoms = _chain_atoms(chain)
        if chain_atoms is not None:
            chains[chain.name] = chain_atoms
    if not chains:
        raise ValueError(f"{label}: no protein chains")
    if chain_ids is None:
        return chains
    unknown = [c for c in chain_ids if c not in chains]
    if unknown:
        raise ValueError(f"{label}: no protein chain {', '.join(unknown)} (found {', '.join(chains)})")
    return {c: chains[c] for c in chain_ids}
