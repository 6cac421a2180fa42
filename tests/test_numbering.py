"""Output numbering schemes (immunofold.numbering): IMGT, Chothia and Kabat residue ids."""

from __future__ import annotations

import dataclasses
import time

import pytest

from immunofold.numbering import SCHEMES, renumber
from immunofold.sequences import InputError, number_chain

TRASTUZUMAB_H = (
    "EVQLVESGGGLVQPGGSLRLSCAASGFNIKDTYIHWVRQAPGKGLEWVARIYPTNGYTRYADSVKGRFTISADTSKNTAYLQMNSLRAEDTAVYYCSR"
    "WGGDGFYAMDYWGQGTLVTVSS"
)
TRASTUZUMAB_L = (
    "DIQMTQSPSSLSASVGDRVTITCRASQDVNTAVAWYQQKPGKAPKLLIYSASFLYSGVPSRFSGSRSGTDFTLTISSLQPEDFATYYCQQHYTTPPTFGQGTKVEIK"
)
HUMAN_LAMBDA = (
    "QSALTQPASVSGSPGQSITISCTGTSSDVGGYNYVSWYQQHPGKAPKLMIYDVSNRPSGVSNRFSGSKSGNTASLTISGLQAEDEADYYCSSYTSSSTRVFGGGTKLTVL"
)
# Kappa chain with a 17-residue CDR-L1 (Kabat L27A-F, Chothia L30A-F).
LONG_L1_KAPPA = (
    "DIVMTQSPDSLAVSLGERATINCKSSQSVLYSSNNKNYLAWYQQKPGQPPKLLIYWASTRESGVPDRFSGSGSGTDFTLTISSLQAEDVAVYYCQQYYSTPLTFGQGTKVEIK"
)
# TCR beta (PDB 1ao7, from STCRDab).
TCR_BETA = (
    "GVTQTPKFQVLKTGQSMTLQCAQDMNHEYMSWYRQDPGMGLRLIHYSVGAGITDQGEVPNGYNVSRSTTEDFPLRLLSAAPSQTSVYFCASRPGLAGGRPEQYFGPGTRLTVT"
)


def _ids(ids):
    return [f"{n}{code}" for n, code in ids]


def _residue_at(chain, ids, label):
    return dict(zip(_ids(ids), chain.sequence))[label]


@pytest.fixture(scope="module")
def heavy():
    return number_chain(TRASTUZUMAB_H, "trastuzumab H")


@pytest.fixture(scope="module")
def light():
    return number_chain(TRASTUZUMAB_L, "trastuzumab L")


def _check_valid(chain, ids, imgt=False):
    assert len(ids) == len(chain.sequence)
    for n, code in ids:
        assert isinstance(n, int) and isinstance(code, str)
        assert code == "" or (len(code) == 1 and code.isupper())
    assert len(set(ids)) == len(ids)
    if imgt:  # IMGT numbers CDR insertions symmetrically (..111A 112A 112..), so only the numbers increase
        assert all(a[0] <= b[0] for a, b in zip(ids, ids[1:]))
    else:
        assert all(a < b for a, b in zip(ids, ids[1:])), "residue ids must increase strictly"


def test_imgt_is_unchanged(heavy, light):
    for chain in (heavy, light):
        ids = renumber(chain, "imgt")
        assert ids == list(chain.positions)
        _check_valid(chain, ids, imgt=True)
    ids = renumber(heavy, "imgt")
    assert _residue_at(heavy, ids, "23") == "C"
    assert _residue_at(heavy, ids, "104") == "C"
    assert _residue_at(heavy, ids, "41") == "W"
    assert _residue_at(heavy, ids, "118") == "W"
    # CDR3 (IMGT 105-117): SRWGGDGFYAMDY
    cdr3 = "".join(a for a, (n, _) in zip(heavy.sequence, ids) if 105 <= n <= 117)
    assert cdr3 == "SRWGGDGFYAMDY"
    ids = renumber(light, "imgt")
    assert _residue_at(light, ids, "23") == "C" and _residue_at(light, ids, "104") == "C"
    assert _residue_at(light, ids, "41") == "W"
    cdr3 = "".join(a for a, (n, _) in zip(light.sequence, ids) if 105 <= n <= 117)
    assert cdr3 == "QQHYTTPPT"


@pytest.mark.parametrize("scheme", ["chothia", "kabat"])
def test_heavy_anchors(heavy, scheme):
    ids = renumber(heavy, scheme)
    _check_valid(heavy, ids)
    at = dict(zip(_ids(ids), heavy.sequence))
    assert at["22"] == "C" and at["92"] == "C" and at["36"] == "W" and at["103"] == "W"
    assert at["1"] == "E" and at["113"] == "S"
    # the standard published numbering of trastuzumab VH
    assert at["52A"] == "P" and at["53"] == "T"
    assert (at["82A"], at["82B"], at["82C"], at["83"]) == ("N", "S", "L", "R")
    assert (at["100"], at["100A"], at["100B"], at["100C"], at["101"], at["102"]) == ("F", "Y", "A", "M", "D", "Y")
    assert at["95"] == "W" and at["93"] == "S"


def test_heavy_cdr1_chothia_vs_kabat(heavy):
    chothia = dict(zip(_ids(renumber(heavy, "chothia")), heavy.sequence))
    kabat = dict(zip(_ids(renumber(heavy, "kabat")), heavy.sequence))
    # Kabat CDR-H1 = H31-H35 (DTYIH), Chothia H26-H32 (GFNIKDT)
    assert "".join(kabat[str(i)] for i in range(31, 36)) == "DTYIH"
    assert "".join(chothia[str(i)] for i in range(26, 33)) == "GFNIKDT"


@pytest.mark.parametrize("scheme", ["chothia", "kabat"])
def test_light_anchors(light, scheme):
    ids = renumber(light, scheme)
    _check_valid(light, ids)
    at = dict(zip(_ids(ids), light.sequence))
    assert at["23"] == "C" and at["88"] == "C" and at["35"] == "W" and at["98"] == "F"
    assert "".join(at[str(i)] for i in range(24, 35)) == "RASQDVNTAVA"  # CDR-L1
    assert "".join(at[str(i)] for i in range(50, 57)) == "SASFLYS"  # CDR-L2
    assert "".join(at[str(i)] for i in range(89, 98)) == "QQHYTTPPT"  # CDR-L3
    assert at["107"] == "K"
    assert all(code == "" for _, code in ids)


def test_long_cdr_l1_insertions():
    chain = number_chain(LONG_L1_KAPPA, "long L1")
    kabat = renumber(chain, "kabat")
    chothia = renumber(chain, "chothia")
    for ids in (kabat, chothia):
        _check_valid(chain, ids)
        at = dict(zip(_ids(ids), chain.sequence))
        assert at["23"] == "C" and at["35"] == "W" and at["88"] == "C"
    assert [f"27{c}" for c in "ABCDEF"] == [x for x in _ids(kabat) if x.startswith("27") and x != "27"]
    assert [f"30{c}" for c in "ABCDEF"] == [x for x in _ids(chothia) if x.startswith("30") and x != "30"]


@pytest.mark.parametrize("scheme", SCHEMES)
def test_lambda_and_nanobody(scheme):
    vhh = (
        "QVQLQESGGGLVQAGGSLRLSCAASGRTFSSYAMGWFRQAPGKEREFVAAISWSGGSTYYADSVKGRFTISRDNAKNTVYLQMNSLKPEDTAVYYCAAGRYGGSWYY"
        "PDSYDYWGQGTQVTVSS"
    )
    for sequence, cys, trp in ((HUMAN_LAMBDA, ("23", "88"), "35"), (vhh, ("22", "92"), "36")):
        chain = number_chain(sequence, "x")
        ids = renumber(chain, scheme)
        _check_valid(chain, ids, imgt=scheme == "imgt")
        if scheme != "imgt":
            at = dict(zip(_ids(ids), chain.sequence))
            assert at[cys[0]] == "C" and at[cys[1]] == "C" and at[trp] == "W"


def test_long_cdr3_gets_insertions_on_100():
    long_h = TRASTUZUMAB_H.replace("WGGDGFYAMDY", "WGGDGSSGSYYGGFYAMDY")
    chain = number_chain(long_h, "long H3")
    for scheme in ("chothia", "kabat"):
        ids = _ids(renumber(chain, scheme))
        assert [x for x in ids if x.startswith("100")] == ["100"] + [f"100{c}" for c in "ABCDEFGHIJK"]
        assert ids[ids.index("100K") + 1] == "101"


def test_too_many_insertions_raise():
    cdr3 = "G" * 40
    long_h = TRASTUZUMAB_H.replace("WGGDGFYAMDY", cdr3)
    chain = number_chain(long_h, "very long H3")
    with pytest.raises(InputError) as error:
        renumber(chain, "kabat", "very long H3")
    assert str(error.value).startswith("very long H3:") and "\n" not in str(error.value)
    # IMGT needs no letters beyond Z here (insertions split over 111 and 112)
    _check_valid(chain, renumber(chain, "imgt"), imgt=True)


@pytest.mark.parametrize("scheme", ["chothia", "kabat", "CHOTHIA"])
def test_tcr_raises_for_antibody_schemes(scheme):
    chain = number_chain(TCR_BETA, "tcr beta")
    assert chain.chain_class == "beta"
    with pytest.raises(InputError) as error:
        renumber(chain, scheme, "1ao7 B")
    message = str(error.value)
    assert message.startswith("1ao7 B:") and "antibod" in message and "imgt" in message and "\n" not in message
    assert renumber(chain, "imgt") == list(chain.positions)


def test_unknown_scheme_raises(heavy):
    with pytest.raises(InputError, match="aho"):
        renumber(heavy, "aho")


def test_framework_insertion_becomes_letter(heavy):
    # An IMGT framework position with an insertion code must map to a letter, never break order.
    positions = list(heavy.positions)
    i = positions.index((20, ""))
    fake = dataclasses.replace(
        heavy,
        sequence=heavy.sequence[: i + 1] + "A" + heavy.sequence[i + 1 :],
        positions=tuple(positions[: i + 1] + [(20, "A")] + positions[i + 1 :]),
    )
    for scheme in SCHEMES:
        ids = renumber(fake, scheme)
        _check_valid(fake, ids, imgt=scheme == "imgt")
    assert renumber(fake, "kabat")[i : i + 3] == [(19, ""), (19, "A"), (20, "")]


def test_deterministic_and_fast(heavy, light):
    for scheme in SCHEMES:
        assert renumber(heavy, scheme) == renumber(heavy, scheme)
    start = time.perf_counter()
    for _ in range(50):
        for scheme in ("chothia", "kabat"):
            renumber(heavy, scheme)
            renumber(light, scheme)
    per_chain = (time.perf_counter() - start) / 200
    assert per_chain < 0.02
