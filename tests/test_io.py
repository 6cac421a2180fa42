"""Round trips of atom14 chains through PDB and mmCIF text, and reading real files."""

from __future__ import annotations

import csv
import gzip
import shutil
from pathlib import Path

import numpy as np
import pytest

from immunofold.io import (ChainAtoms, build_structure, read_chains, to_cif_string, to_pdb_string,
                           write_structure)

FIXTURE = Path(__file__).parent / "fixtures" / "nanobody_7f5g.pdb"
FIXTURE_SEQUENCE = ("QVQLQESGGGLVQPGGSLRLSCAASGSFFEFGTVGWFRQAPGKQRELVSRITGNDHRYYADSVKGRFTISRDNDETTVY"
                    "LQMDSLKPEDTAIYHCNILEGQRWSNYWGQGTQVTVSA")
SABDAB = Path("/work/shared/data/sabdab")


@pytest.fixture(scope="module")
def nanobody() -> ChainAtoms:
    return read_chains(FIXTURE)["B"]


def split_into_two_chains(chain: ChainAtoms) -> list[ChainAtoms]:
    """The fixture chain cut into chains H (first 60 residues) and L (rest), with varied B-factors."""
    bfactor = np.round(np.linspace(0.25, 9.75, len(chain.sequence)), 2)
    parts = []
    for chain_id, part in (("H", slice(0, 60)), ("L", slice(60, None))):
        parts.append(ChainAtoms(chain_id, chain.sequence[part], chain.residue_ids[part], chain.atom14[part],
                                chain.atom_mask[part], bfactor[part]))
    return parts


def assert_same_chains(expected: list[ChainAtoms], actual: dict[str, ChainAtoms]) -> None:
    assert list(actual) == [chain.chain_id for chain in expected]
    for chain in expected:
        read = actual[chain.chain_id]
        assert read.sequence == chain.sequence
        assert read.residue_ids == chain.residue_ids
        np.testing.assert_array_equal(read.atom_mask, chain.atom_mask)
        np.testing.assert_allclose(read.atom14[chain.atom_mask], chain.atom14[chain.atom_mask], atol=1e-3)
        np.testing.assert_allclose(read.bfactor, chain.bfactor, atol=1e-3)


def test_fixture_reads_with_insertion_codes(nanobody):
    assert nanobody.sequence == FIXTURE_SEQUENCE
    assert nanobody.atom14.shape == (117, 14, 3)
    assert nanobody.atom_mask.shape == (117, 14)
    assert [rid for rid in nanobody.residue_ids if rid[1]] == [(82, "A"), (82, "B"), (82, "C"), (100, "A")]
    assert nanobody.atom_mask[:, :4].all()


def test_pdb_round_trip(nanobody):
    chains = split_into_two_chains(nanobody)
    text = to_pdb_string(build_structure(chains, remarks=["model immunofold test"]))
    assert_same_chains(chains, read_chains(text))
    lines = text.splitlines()
    assert lines[0].startswith("REMARK 250 model immunofold test")
    assert sum(line.startswith("TER") for line in lines) == 2
    atoms = [line for line in lines if line.startswith("ATOM")]
    assert [int(line[6:11]) for line in atoms[:3]] == [1, 2, 3]
    assert {line[76:78].strip() for line in atoms} == {"C", "N", "O", "S"}
    assert all(line[76:78].strip() == line[12:16].strip()[0] for line in atoms)
    assert any(line[22:27] == "  82A" for line in atoms)


def test_cif_round_trip_keeps_remarks(nanobody):
    chains = split_into_two_chains(nanobody)
    text = to_cif_string(build_structure(chains, remarks=["model immunofold test"]))
    assert_same_chains(chains, read_chains(text))
    assert "_database_PDB_remark.text" in text and "model immunofold test" in text


def test_files_carry_the_records_structure_readers_need(nanobody):
    """mmCIF: residue types' chem_comp types, the canonical sequence, auth ids, label_seq_id and the disulfide
    (read by Biotite without a warning); PDB: the disulfide as SSBOND."""
    import io
    import warnings

    import gemmi
    from biotite.structure.io import pdbx

    structure = build_structure([nanobody], remarks=["model immunofold test"])
    text = to_cif_string(structure)
    block = gemmi.cif.read_string(text).sole_block()
    types = dict(zip(block.find_values("_chem_comp.id"), block.find_values("_chem_comp.type")))
    assert types["GLY"] == "'peptide linking'" and types["CYS"] == "'L-peptide linking'"
    assert list(block.find_values("_struct_conn.conn_type_id")) == ["disulf"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        cif = pdbx.CIFFile.read(io.StringIO(text))
        assert str(pdbx.get_sequence(cif)["B"]) == FIXTURE_SEQUENCE
        atoms = pdbx.get_structure(cif, model=1, use_author_fields=False)
    assert set(atoms.chain_id) == {"B"} and atoms.res_id.max() == len(FIXTURE_SEQUENCE)  # label_seq_id 1..N
    assert sum(line.startswith("SSBOND") for line in to_pdb_string(structure).splitlines()) == 1


def test_write_structure_infers_format_and_leaves_no_temp_files(nanobody, tmp_path):
    structure = build_structure([nanobody])
    for name in ("model.pdb", "model.cif", "model.mmcif"):
        write_structure(structure, tmp_path / name)
        assert read_chains(tmp_path / name)["B"].sequence == FIXTURE_SEQUENCE
    assert (tmp_path / "model.cif").read_text().startswith("data_")
    write_structure(structure, tmp_path / "model.txt", fmt="pdb")
    written = sorted(p.name for p in tmp_path.iterdir())
    assert written == ["model.cif", "model.mmcif", "model.pdb", "model.txt"]
    with pytest.raises(ValueError, match="model.xyz"):
        write_structure(structure, tmp_path / "model.xyz")
    with pytest.raises(IsADirectoryError, match=f"^{tmp_path} is a folder; give a file name such as "):
        write_structure(structure, tmp_path)


def test_reads_gzipped_file(nanobody, tmp_path):
    gz_path = tmp_path / "nanobody.pdb.gz"
    with open(FIXTURE, "rb") as source, gzip.open(gz_path, "wb") as target:
        shutil.copyfileobj(source, target)
    assert_same_chains([nanobody], read_chains(gz_path))


def test_modified_residues_waters_and_hydrogens(nanobody):
    """MSE reads as MET (SD from SE); water, ligand and hydrogen atoms are skipped."""
    lines = []
    for line in FIXTURE.read_text().splitlines():
        if line.startswith("ATOM") and line[17:20] == "MET":
            line = "HETATM" + line[6:17] + "MSE" + line[20:]
            if line[12:16] == " SD ":
                line = line[:12] + "SE  " + line[16:76] + "SE"
        lines.append(line)
        if line.startswith("ATOM") and line[12:16] == " CA " and line[22:26] == "   1":
            lines.append(line[:12] + " HA " + line[16:76] + " H")
    lines.insert(-1, "HETATM 9001  O   HOH B 201       1.000   2.000   3.000  1.00 20.00           O")
    lines.insert(-1, "HETATM 9002  C1  GOL B 202       4.000   5.000   6.000  1.00 20.00           C")
    assert_same_chains([nanobody], read_chains("\n".join(lines) + "\n"))


def test_missing_atoms_are_masked(nanobody):
    text = "".join(line for line in FIXTURE.read_text().splitlines(keepends=True)
                   if not (line[22:26] == "   1" and line[12:16] in (" OE1", " NE2")))
    read = read_chains(text)["B"]
    assert read.sequence == FIXTURE_SEQUENCE
    assert read.atom_mask[0].tolist() == [True] * 7 + [False] * 7
    np.testing.assert_array_equal(read.atom_mask[1:], nanobody.atom_mask[1:])


def test_chain_selection_and_unknown_chain():
    assert list(read_chains(FIXTURE, ["B"])) == ["B"]
    with pytest.raises(ValueError, match=f"{FIXTURE}.*no protein chain H"):
        read_chains(FIXTURE, ["H"])


@pytest.mark.parametrize("content", ["", "this is not a structure\n", "ATOM      1  N   GLN B   1     -1"])
def test_bad_files_raise_value_error_naming_the_path(tmp_path, content):
    path = tmp_path / "broken.pdb"
    path.write_text(content)
    with pytest.raises(ValueError, match="broken.pdb"):
        read_chains(path)


def test_reads_shared_training_antibody():
    summary = SABDAB / "summary.tsv"
    if not summary.exists():
        pytest.skip("shared SAbDab data not available")
    with open(summary) as handle:
        entry = next(row for row in csv.DictReader(handle, delimiter="\t") if row["kind"] == "antibody")
    chains = read_chains(SABDAB / "structures" / f"{entry['pdb']}.pdb.gz", [entry["Hchain"], entry["Lchain"]])
    assert chains[entry["Hchain"]].sequence == entry["heavy_seq"]
    assert chains[entry["Lchain"]].sequence == entry["light_seq"]
    text = to_pdb_string(build_structure(list(chains.values())))
    assert_same_chains(list(chains.values()), read_chains(text))


def test_remarks_are_written_in_ascii_and_wrapped_at_spaces(nanobody):
    from immunofold.io import ascii_text

    remark = ("REFINED YES (backbone outliers remain: distorted backbone angle C-N-CA at H113 ARG - H114 TRP: 139°; "
              "distorted backbone angle N-CA-C at H112A TYR: 92°; error 1.5 Å for TCR α)")
    text = to_pdb_string(build_structure([nanobody], remarks=[remark]))
    lines = [line for line in text.splitlines() if line.startswith("REMARK")]
    assert all(len(line) <= 80 and line.isascii() for line in lines)
    assert "C-N-CA" in "\n".join(lines) and "139 deg" in " ".join(lines) and "1.5 A" in " ".join(lines)
    assert " ".join(line[11:].strip() for line in lines) == ascii_text(remark)
    assert to_cif_string(build_structure([nanobody], remarks=[remark])).isascii()
