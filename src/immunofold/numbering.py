"""Residue numbering schemes for output files: IMGT, Chothia or Kabat.

Everything inside immunofold is IMGT-numbered (`sequences.NumberedChain.positions`). `renumber`
converts those IMGT positions to the residue ids of the scheme a user asked for.

Chothia and Kabat are converted here from IMGT by hand-written rules (the ANARCI conventions:
framework positions map one to one, CDR regions are re-placed from their length) rather than by a
numbering library: riot-na works offline but pins biopython/scikit-bio (~0.5 GB) and numbers the
sequence again on its own, abnumber needs ANARCI+hmmer, and our IMGT numbering already fixes
every residue, so the conversion is deterministic, dependency-free and well under a millisecond.
"""

from __future__ import annotations

from typing import Callable

from immunofold.sequences import InputError, NumberedChain

SCHEMES = ("imgt", "chothia", "kabat")
ANTIBODY_CHAIN_CLASSES = ("heavy", "kappa", "lambda")
_LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"

ResidueId = tuple[int, str]


class _TooManyInsertions(Exception):
    """Raised inside the converters; turned into an InputError naming the record."""


def _letter(k: int) -> str:
    if k >= len(_LETTERS):
        raise _TooManyInsertions
    return _LETTERS[k]


# --- region rules ----------------------------------------------------------------------------
# A rule takes the IMGT positions of the residues in one region and returns their scheme ids.
# Two kinds: `_Mapped` regions follow IMGT one to one (IMGT positions without a counterpart in the
# scheme become insertion codes); length rules re-place a CDR region from its residue count only.


class _Mapped:
    """Framework-like region: IMGT `first` maps to scheme `start`; `skipped` IMGT positions have
    no scheme position of their own (a residue there becomes an insertion on the previous number,
    or takes that previous number if its own residue is absent)."""

    def __init__(self, first: int, last: int, start: int, skipped: tuple[int, ...] = ()):
        self.table: dict[int, int | None] = {}
        number = start
        for imgt in range(first, last + 1):
            if imgt in skipped:
                self.table[imgt] = None
            else:
                self.table[imgt] = number
                number += 1
        # scheme number of the nearest mapped IMGT position at or before each position
        self.previous: dict[int, int] = {}
        current = start - 1
        for imgt in range(first, last + 1):
            if self.table[imgt] is not None:
                current = self.table[imgt]
            self.previous[imgt] = current

    def __call__(self, positions: list[ResidueId], last: ResidueId) -> list[ResidueId]:
        out: list[ResidueId] = []
        inserted = 0
        for number, code in positions:
            mapped = self.table[number] if not code else None
            if mapped is not None and (mapped, "") > last:
                out.append((mapped, ""))
                inserted = 0
            else:
                candidate = self.previous[number]
                if (candidate, "") > last:  # the position before is empty: take its number
                    out.append((candidate, ""))
                    inserted = 0
                else:
                    out.append((last[0], _letter(inserted)))
                    inserted += 1
            last = out[-1]
        return out


def _fill(length: int, deletion_order: list[int], insert_at: int, capacity: int) -> list[ResidueId]:
    """`capacity` numbered positions; shorter loops drop positions in `deletion_order` first,
    longer loops get insertion codes on `insert_at`."""
    kept = [(n, "") for n in deletion_order[max(0, capacity - length):]]
    kept += [(insert_at, _letter(k)) for k in range(max(0, length - capacity))]
    return sorted(kept)


def _heavy_fr1(positions: list[ResidueId], last: ResidueId) -> list[ResidueId]:
    """IMGT 1-10 of a heavy chain. Residues with no Chothia/Kabat slot (IMGT 10, or IMGT insertions)
    are placed as insertions on 6, as ANARCI does."""
    extra = sum(1 for n, code in positions if n == 10 or code)
    start = positions[0][0]
    if not extra or start > 6:
        return _Mapped(1, 10, 1, skipped=(10,))(positions, last)
    ids = [(n, "") for n in range(start, 7)] + [(6, _letter(k)) for k in range(extra)]
    ids += [(7, ""), (8, ""), (9, "")]
    return ids[: len(positions)]


def _chothia_h1(positions: list[ResidueId], last: ResidueId) -> list[ResidueId]:
    """IMGT 24-38 -> Chothia H23-H33, insertions on 31 (31A, 31B ...), deletions back from 31."""
    length = len(positions)
    if length >= 11:
        ids = [(n, "") for n in range(23, 32)] + [(31, _letter(k)) for k in range(length - 11)]
        return ids + [(32, ""), (33, "")]
    front = max(length - 2, 0)
    return [(n, "") for n in range(23, 23 + front)] + [(32, ""), (33, "")][: length - front]


def _kabat_h1(positions: list[ResidueId], last: ResidueId) -> list[ResidueId]:
    """IMGT 24-40 -> Kabat H23-H35, insertions on 35 (35A, 35B), deletions back from 35."""
    length = len(positions)
    ids = [(n, "") for n in range(23, 36)][:length]
    return ids + [(35, _letter(k)) for k in range(length - 13)]


def _h2(positions: list[ResidueId], last: ResidueId) -> list[ResidueId]:
    """IMGT 55-65 -> H50-H57 (Chothia and Kabat), insertions on 52 (52A-C ...)."""
    return _fill(len(positions), [52, 51, 50, 53, 54, 55, 56, 57], 52, 8)


def _h3(positions: list[ResidueId], last: ResidueId) -> list[ResidueId]:
    """IMGT 105-117 -> H93-H102 (Chothia and Kabat), insertions on 100 (100A ...)."""
    return _fill(len(positions), [100, 99, 98, 97, 96, 95, 101, 102, 94, 93], 100, 10)


def _chothia_l1(positions: list[ResidueId], last: ResidueId) -> list[ResidueId]:
    """IMGT 24-40 -> Chothia L24-L34, insertions on 30 (30A ...), deletions forward from 31."""
    length = len(positions)
    ids = [(n, "") for n in range(24, 31)][:length] + [(30, _letter(k)) for k in range(length - 11)]
    return ids + [(n, "") for n in range(31, 35)][max(0, 11 - length):]


def _kabat_l1(positions: list[ResidueId], last: ResidueId) -> list[ResidueId]:
    """IMGT 24-40 -> Kabat L24-L34, insertions on 27 (27A-F ...), deletions forward from 28."""
    length = len(positions)
    ids = [(n, "") for n in range(24, 28)][:length] + [(27, _letter(k)) for k in range(length - 11)]
    return ids + [(n, "") for n in range(28, 35)][max(0, 11 - length):]


_L2_MAPPED = _Mapped(57, 67, 51, skipped=tuple(range(58, 65)))


def _l2(positions: list[ResidueId], last: ResidueId) -> list[ResidueId]:
    """IMGT 57-67 -> L51-L54; a longer loop gets insertions on 52, a normal one follows IMGT."""
    length = len(positions)
    if length <= 4:
        return _L2_MAPPED(positions, last)
    return [(51, ""), (52, "")] + [(52, _letter(k)) for k in range(length - 4)] + [(53, ""), (54, "")]


_LIGHT_FR3_MAPPED = _Mapped(68, 104, 55, skipped=(73, 81, 82))


def _chothia_l_fr3(positions: list[ResidueId], last: ResidueId) -> list[ResidueId]:
    """IMGT 68-104 -> Chothia L55-L88; an extra residue goes on 68 (68A), one missing drops 68."""
    length = len(positions)
    if length > 34:
        ids = [(n, "") for n in range(55, 69)] + [(68, _letter(k)) for k in range(length - 34)]
        return ids + [(n, "") for n in range(69, 89)]
    if length == 33:
        return [(n, "") for n in range(55, 68)] + [(n, "") for n in range(69, 89)]
    return _LIGHT_FR3_MAPPED(positions, last)


def _l3(positions: list[ResidueId], last: ResidueId) -> list[ResidueId]:
    """IMGT 105-117 -> L89-L97 (Chothia and Kabat), insertions on 95 (95A-F ...)."""
    return _fill(len(positions), [95, 94, 93, 92, 91, 96, 97, 90, 89], 95, 9)


Rule = Callable[[list[ResidueId], ResidueId], list[ResidueId]]
# Per (scheme, chain type): consecutive IMGT ranges (first, last) and the rule for each.
_HEAVY_COMMON_TAIL: tuple[tuple[int, int, Rule], ...] = (
    (55, 65, _h2),
    (66, 104, _Mapped(66, 104, 58, skipped=(73, 92, 93, 94))),  # 82A-C
    (105, 117, _h3),
    (118, 128, _Mapped(118, 128, 103)),
)
_LIGHT_COMMON_HEAD: tuple[tuple[int, int, Rule], ...] = ((1, 23, _Mapped(1, 23, 1)),)
_LIGHT_COMMON_TAIL: tuple[tuple[int, int, Rule], ...] = ((105, 117, _l3), (118, 128, _Mapped(118, 128, 98)))
_REGIONS: dict[tuple[str, str], tuple[tuple[int, int, Rule], ...]] = {
    ("chothia", "heavy"): (
        (1, 10, _heavy_fr1),
        (11, 23, _Mapped(11, 23, 10)),
        (24, 38, _chothia_h1),
        (39, 54, _Mapped(39, 54, 34)),
        *_HEAVY_COMMON_TAIL,
    ),
    ("kabat", "heavy"): (
        (1, 10, _heavy_fr1),
        (11, 23, _Mapped(11, 23, 10)),
        (24, 40, _kabat_h1),
        (41, 54, _Mapped(41, 54, 36)),
        *_HEAVY_COMMON_TAIL,
    ),
    ("chothia", "light"): (
        *_LIGHT_COMMON_HEAD,
        (24, 40, _chothia_l1),
        (41, 56, _Mapped(41, 56, 35)),
        (57, 67, _l2),
        (68, 104, _chothia_l_fr3),
        *_LIGHT_COMMON_TAIL,
    ),
    ("kabat", "light"): (
        *_LIGHT_COMMON_HEAD,
        (24, 40, _kabat_l1),
        (41, 56, _Mapped(41, 56, 35)),
        (57, 67, _l2),
        (68, 104, _LIGHT_FR3_MAPPED),
        *_LIGHT_COMMON_TAIL,
    ),
}


def renumber(chain: NumberedChain, scheme: str, record: str = "chain") -> list[tuple[int, str]]:
    """Residue ids (number, insertion code) of `chain` in `scheme`, one per residue of
    `chain.sequence`, in order; the insertion code is '' or one capital letter.

    imgt returns the IMGT positions unchanged; chothia and kabat are defined for antibody chains
    only (heavy, kappa, lambda). Raises InputError (naming `record`) for an unknown scheme, a TCR
    chain with chothia/kabat, or a loop needing more than 26 insertion codes.
    """
    scheme = str(scheme).lower()
    if scheme not in SCHEMES:
        raise InputError(record, f"unknown numbering scheme {scheme!r} (imgt, chothia or kabat)")
    if scheme == "imgt":
        return [(int(n), str(code)) for n, code in chain.positions]
    if chain.chain_class not in ANTIBODY_CHAIN_CLASSES:
        raise InputError(
            record, f"{scheme} numbering is defined for antibodies only, not a TCR {chain.chain_class} chain; use imgt"
        )
    chain_type = "heavy" if chain.chain_class == "heavy" else "light"
    regions = _REGIONS[(scheme, chain_type)]

    # Split the residues into the scheme's regions by IMGT position number.
    grouped: list[list[ResidueId]] = [[] for _ in regions]
    region = 0
    for number, code in chain.positions:
        while region < len(regions) - 1 and number > regions[region][1]:
            region += 1
        if not regions[region][0] <= number <= regions[region][1]:
            raise InputError(record, f"IMGT position {number}{code} is outside the V domain (1-128)")
        grouped[region].append((int(number), str(code).strip()))

    ids: list[ResidueId] = []
    last: ResidueId = (0, "")
    try:
        for (_, _, rule), positions in zip(regions, grouped):
            if not positions:
                continue
            converted = rule(positions, last)
            assert len(converted) == len(positions)
            ids.extend(converted)
            last = converted[-1]
    except _TooManyInsertions:
        raise InputError(
            record, f"a loop is too long for {scheme} numbering (more than 26 insertion codes); use imgt"
        ) from None
    return ids
