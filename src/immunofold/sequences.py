"""Sequence checks and IMGT numbering of immune-receptor V domains (via anarcism).

`number_chain` turns one raw sequence into a `NumberedChain`: cleaned, identified as heavy,
kappa, lambda, TCR alpha or TCR beta, numbered in IMGT and cut to the V domain (IMGT 1-128).
Every rejection is an `InputError` whose message is one line naming the record and the reason.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import anarcism

from immunofold.constants import ANARCI_TO_CHAIN_CLASS, KIND_CHAIN_IDS, RESTYPES

MIN_DOMAIN_LENGTH = 70  # residues; shorter hits are fragments, not V domains
MAX_SEQUENCE_LENGTH = 5000  # residues; longer input is refused before numbering
_ALLOWED_LETTERS = set(RESTYPES)
# Which chain classes fill which slot of each receptor kind.
KIND_SLOTS: dict[str, tuple[tuple[str, tuple[str, ...]], ...]] = {
    "antibody": (("heavy", ("heavy",)), ("light", ("kappa", "lambda"))),
    "nanobody": (("heavy", ("heavy",)),),
    "tcr": (("alpha", ("alpha",)), ("beta", ("beta",))),
}


class InputError(ValueError):
    """A record that cannot be modelled; str(error) is one line: '<record>: <reason>'.

    `field` names the input it concerns where one does: a chain slot ("heavy", "light", "alpha", "beta"),
    "kind", "device" or "numbering"; None for the record as a whole."""

    def __init__(self, record: str, reason: str, field: str | None = None):
        self.record = record
        self.reason = reason
        self.field = field
        super().__init__(f"{record}: {reason}")


@dataclass(frozen=True)
class NumberedChain:
    """One IMGT-numbered V domain."""

    chain_class: str  # one of constants.CHAIN_CLASSES
    sequence: str  # V-domain residues only, one-letter
    positions: tuple[tuple[int, str], ...]  # IMGT (number, insertion code) per residue
    species: str = ""
    trimmed_before: int = 0  # residues removed N-terminal of the domain
    trimmed_after: int = 0  # residues removed C-terminal of the domain
    source_indices: tuple[int, ...] = ()  # index of each residue in the cleaned input sequence
    notes: tuple[str, ...] = field(default=())

    def __len__(self) -> int:
        return len(self.sequence)


def clean_sequence(sequence: str, record: str) -> str:
    """Upper-case, drop whitespace and alignment gaps ('-', '.') and one trailing stop ('*'); refuse anything
    else that is not one of the 20 amino acids, naming the first offending position (1-based, whitespace ignored)."""
    if sequence is None:
        raise InputError(record, "no sequence given")
    if not isinstance(sequence, str):
        raise InputError(record, f"sequence must be text, not {type(sequence).__name__}")
    text = re.sub(r"\s", "", sequence).upper()
    if text.startswith(">"):
        raise InputError(record, "looks like a FASTA header; paste the sequence only (FASTA files go to `immunofold batch`)")
    if not re.sub(r"[-.*]", "", text):
        raise InputError(record, "empty sequence")
    if text.endswith("*"):
        text = text[:-1]
    for position, letter in enumerate(text, start=1):
        if letter == "*":
            raise InputError(record, f"stop codon '*' at position {position} inside the sequence")
        if letter.isdigit():
            raise InputError(record, f"digit {letter!r} at position {position} (paste the sequence without numbers)")
    cleaned = re.sub(r"[-.]", "", text)
    bad = sorted(set(cleaned) - _ALLOWED_LETTERS)
    if bad:
        shown = "".join(bad[:5])
        first = next(i for i, letter in enumerate(text, start=1) if letter in bad)
        raise InputError(
            record, f"invalid letters {shown!r}, first at position {first} (only the 20 standard amino acids are accepted)"
        )
    if len(cleaned) > MAX_SEQUENCE_LENGTH:
        raise InputError(record, f"sequence of {len(cleaned)} residues is longer than {MAX_SEQUENCE_LENGTH}")
    if len(cleaned) < MIN_DOMAIN_LENGTH:
        raise InputError(record, f"sequence of {len(cleaned)} residues is too short for a V domain (< {MIN_DOMAIN_LENGTH})")
    return cleaned


def cleaning_notes(sequence: str, record: str) -> list[str]:
    """Notes naming what `clean_sequence` dropped from a sequence it accepted, besides whitespace and letter case: a
    trailing stop codon '*' and alignment gaps ('-', '.'), so that a stray gap typed into a sequence is seen."""
    notes = []
    if sequence.rstrip().endswith("*"):
        notes.append(f"{record}: dropped the trailing stop codon '*'")
    gaps = sum(sequence.count(gap) for gap in "-.")
    if gaps:
        notes.append(f"{record}: dropped {gaps} alignment gap character{'s' if gaps > 1 else ''} ('-' or '.')")
    return notes


# anarcism's rhesus kappa/heavy profiles shift IMGT numbering by one (Cys at 24, Trp at 42), so they are never used.
# Until 0.10.5 a sequence was numbered with every profile and again without these where one was drawn: on all 3,498
# unique train and val chains, numbering without them from the start gives the same domains (chain type, species,
# every residue's number), in one call instead of two for the 7 % that drew one.
UNRELIABLE_SPECIES = {"rhesus"}
RELIABLE_SPECIES = [s for s in anarcism.species() if s not in UNRELIABLE_SPECIES]


def number_together(sequences: Iterable[str]) -> dict[str, list]:
    """anarcism domains of many cleaned sequences, {sequence: domains}, from one call: from 8 chains on about a quarter
    less CPU per chain than a call each (13.7-14.7 vs 18.8 ms on val antibody chains). Empty if the call fails
    (anarcism refuses a whole call for one bad sequence): `find_domains` then numbers each sequence on its own,
    where a failure names its record."""
    unique = list(dict.fromkeys(sequences))
    if not unique:
        return {}
    try:
        results = anarcism.number_sequences([(str(i), s) for i, s in enumerate(unique)], workers=1,
                                            allowed_species=RELIABLE_SPECIES)
    except Exception:  # noqa: BLE001  (any failure: each sequence is numbered alone, its failure reported per record)
        return {}
    return {sequence: result.domains for sequence, result in zip(unique, results)}


def _number(sequence: str, record: str, numbered: Mapping[str, list] | None = None):
    """anarcism domains of a sequence (RELIABLE_SPECIES profiles); from `numbered` (`number_together`) if it holds
    the sequence."""
    if numbered is not None and sequence in numbered:
        return numbered[sequence]
    try:
        return anarcism.number_sequence(sequence, id=record, allowed_species=RELIABLE_SPECIES).domains
    except anarcism.AnarcismError as error:
        raise InputError(record, f"numbering failed ({error})") from None


def find_domains(sequence: str, record: str, numbered: Mapping[str, list] | None = None) -> list[NumberedChain]:
    """All V domains in a cleaned sequence, N- to C-terminal (one for a chain, two for an scFv); anarcism's domains
    are taken from `numbered` (`number_together`) where it holds the sequence."""
    domains = []
    for domain in _number(sequence, record, numbered):
        numbered = [r for r in domain.numbering if 1 <= r.position <= 128]
        if len(numbered) < MIN_DOMAIN_LENGTH:
            continue
        chain_class = ANARCI_TO_CHAIN_CLASS.get(domain.chain_type)
        if chain_class is None:
            continue  # gamma chains: not modelled (`no_domain_error` says so)
        # anarcism may leave a residue inside an unusual insertion unnumbered; keep the numbered ones.
        index_to_position = {r.sequence_index: (r.position, r.insertion_code.strip()) for r in numbered}
        index_to_position = _with_long_cdr3_numbered(sequence, index_to_position, record)
        _check_insertion_codes(index_to_position, record)
        kept = tuple(sorted(index_to_position))
        domains.append(
            NumberedChain(
                chain_class=chain_class,
                sequence="".join(sequence[i] for i in kept),
                positions=tuple(index_to_position[i] for i in kept),
                species=domain.species,
                trimmed_before=kept[0],
                trimmed_after=len(sequence) - kept[-1] - 1,
                source_indices=kept,
                notes=_domain_notes(domain.chain_type, index_to_position, record),
            )
        )
    domains.sort(key=lambda d: d.trimmed_before)
    return domains


def _domain_notes(chain_type: str, index_to_position: dict, record: str) -> tuple[str, ...]:
    """What a user should know about a numbered domain: a delta-typed chain modelled as alpha; a domain that ends
    before FR4 (its CDR3 is probably cut)."""
    notes = []
    if chain_type == "D":
        notes.append(f"{record}: numbered as a TCR delta chain (anarcism's type for TRDV and the shared TRAV/DV genes); "
                     "modelled as an alpha chain")
    last = max(number for number, _ in index_to_position.values())
    if last < 118:
        notes.append(f"{record}: the V domain ends at IMGT {last}, before FR4 (IMGT 118-128): its CDR3 is probably "
                     "incomplete; give the whole V domain")
    return tuple(notes)


UNSUPPORTED_CHAIN_TYPES = {"G": "TCR gamma"}  # anarcism chain types immunofold does not model


def no_domain_error(sequence: str, record: str, numbered: Mapping[str, list] | None = None) -> InputError:
    """The error for a cleaned sequence in which `find_domains` found nothing: names a V domain of a kind that is not
    modelled (a TCR gamma chain) if anarcism saw one (`numbered`: as `find_domains`)."""
    unsupported = [UNSUPPORTED_CHAIN_TYPES[d.chain_type] for d in _number(sequence, record, numbered)
                   if d.chain_type in UNSUPPORTED_CHAIN_TYPES]
    if unsupported:
        return InputError(record, f"is a {unsupported[0]} chain: gamma/delta TCRs are not modelled (alpha/beta only)")
    return InputError(record, "no antibody or TCR variable domain found (not an immune receptor V domain?)")


def imgt_cdr3_positions(length: int) -> list[tuple[int, str]]:
    """IMGT numbers of a CDR3 of `length` residues (between Cys 104 and Trp/Phe 118): up to 13 residues take
    positions 105-117 with the middle ones left out; longer loops insert at 111 (111A, 111B, ...) and 112 (..., 112B,
    112A, 112), the 112 side taking the odd one, as anarcism numbers them."""
    base = list(range(105, 118))
    if length <= len(base):
        removal_order = [111, 112, 110, 113, 109, 114, 108, 115, 107, 116, 106, 117, 105]  # IMGT's gap order
        kept = sorted(set(base) - set(removal_order[:len(base) - length]))
        return [(n, "") for n in kept]
    extra = length - len(base)
    after_111, after_112 = extra // 2, extra - extra // 2
    return ([(n, "") for n in range(105, 112)] + [(111, _letter(k)) for k in range(after_111)]
            + [(112, _letter(k)) for k in reversed(range(after_112))] + [(n, "") for n in range(112, 118)])


def _letter(k: int) -> str:
    """Insertion code of the k-th insertion at a position: A, B, ..., Z."""
    return chr(ord("A") + k)


MAX_RESCUED_CDR3 = 13 + 2 * 26  # residues: one insertion letter A-Z per residue on each side of 111/112


# Framework 4 begins with Trp/Phe-Gly-x-Gly at IMGT 118-121 (the J motif) in every V domain we model.
J_MOTIF = re.compile(r"[WF]G.G")
FR4_LENGTH = 11  # IMGT 118-128


def _with_long_cdr3_numbered(sequence: str, index_to_position: dict, record: str) -> dict:
    """The numbering, with the CDR3 and FR4 numbered by IMGT's rule where anarcism lost them.

    anarcism's profile alignment loses the J motif after some long CDR3s (31- and 32-residue CDR-H3s on a human
    heavy chain: it numbers part of the loop as FR4 and stops at IMGT 121, or runs FR4 out to 128 inside the loop).
    A chain whose numbering has a Cys 104 and does not read the J motif at 118-121, while a J motif follows where
    the numbering stopped, is renumbered from Cys 104 on: `imgt_cdr3_positions` for the loop, 118-128 for FR4.
    Raises InputError for a loop longer than MAX_RESCUED_CDR3. Hand-written: no numbering library offers this."""
    by_position = {position: index for index, position in index_to_position.items()}
    cysteine, j_residue = by_position.get((104, "")), by_position.get((118, ""))
    numbered_j = sequence[j_residue:j_residue + 4] if j_residue is not None else ""
    if cysteine is None or J_MOTIF.fullmatch(numbered_j):
        return index_to_position
    motif = J_MOTIF.search(sequence, max(cysteine + 3, max(index_to_position) - 3))  # where the numbering stopped
    if motif is None:
        return index_to_position
    loop = range(cysteine + 1, motif.start())
    if len(loop) > MAX_RESCUED_CDR3:
        raise _cdr3_too_long(record, len(loop))
    kept = {index: position for index, position in index_to_position.items() if index <= cysteine}
    kept.update(zip(loop, imgt_cdr3_positions(len(loop))))
    fr4 = range(motif.start(), min(motif.start() + FR4_LENGTH, len(sequence)))
    kept.update(zip(fr4, [(n, "") for n in range(118, 129)]))
    return kept


def _check_insertion_codes(index_to_position: dict, record: str) -> None:
    """InputError if a position needs more than the 26 one-letter insertion codes a PDB file can hold (anarcism
    goes on with 'AA', 'BB', ... past Z: CDR3s of 66 residues or more)."""
    long_codes = [number for number, code in index_to_position.values() if len(code) > 1]
    if not long_codes:
        return
    cdr3 = sum(105 <= number <= 117 for number, _ in index_to_position.values())
    if set(long_codes) <= {111, 112}:
        raise _cdr3_too_long(record, cdr3)
    raise InputError(record, f"more than 26 insertions at IMGT {long_codes[0]}: longer than a PDB file can number")


def _cdr3_too_long(record: str, length: int) -> InputError:
    return InputError(record, f"CDR3 of {length} residues: longer than immunofold can number (at most "
                              f"{MAX_RESCUED_CDR3}, 26 insertion codes A-Z on each side of IMGT 111/112)")


# VHH hallmark residues at IMGT 42, 49, 50, 52 (the data README's nanobody definition); a lone heavy chain with fewer
# than MIN_HALLMARKS of them is a conventional VH.
VHH_HALLMARKS = {42: "FY", 49: "EQ", 50: "RC", 52: "FGL"}
MIN_HALLMARKS = 2


def count_vhh_hallmarks(positions: tuple[tuple[int, str], ...], sequence: str) -> int:
    """Number of IMGT hallmark positions (42, 49, 50, 52) holding a VHH-type residue."""
    residue_at = {number: aa for (number, code), aa in zip(positions, sequence) if not code}
    return sum(residue_at.get(number, "") in allowed for number, allowed in VHH_HALLMARKS.items())


def number_chain(sequence: str, record: str, allowed: tuple[str, ...] | None = None) -> NumberedChain:
    """Number one chain; it must hold exactly one V domain (of an `allowed` chain class, if given)."""
    cleaned = clean_sequence(sequence, record)
    domains = find_domains(cleaned, record)
    if not domains:
        raise no_domain_error(cleaned, record)
    if len(domains) > 1:
        kinds = "+".join(d.chain_class for d in domains)
        hint = " or split the scFv" if len({d.chain_class for d in domains}) > 1 else ""
        raise InputError(record, f"holds {len(domains)} V domains ({kinds}); give one domain per chain{hint}")
    domain = domains[0]
    if allowed is not None and domain.chain_class not in allowed:
        raise InputError(record, f"is {indefinite_article(domain.chain_class)} {domain.chain_class} chain, expected {' or '.join(allowed)}")
    notes = [*domain.notes, *cleaning_notes(sequence, record)]
    if domain.trimmed_before or domain.trimmed_after:
        notes.append(
            f"{record}: kept the V domain (IMGT 1-128), removed {domain.trimmed_before} residue(s) before "
            f"and {domain.trimmed_after} after"
        )
    return NumberedChain(**{**domain.__dict__, "notes": tuple(notes)})


def indefinite_article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def number_receptor(kind: str, chains: dict[str, str], record: str = "input") -> list[NumberedChain]:
    """Number the chains of one receptor of `kind`; `chains` maps slot name -> sequence.

    Slots: antibody heavy + light, nanobody heavy, tcr alpha + beta. Returns chains in the
    output order of `constants.KIND_CHAIN_IDS[kind]`. Two chains are numbered at once in two threads
    (anarcism releases the GIL); a problem is reported for the first slot that has one, as if in turn.
    """
    if kind not in KIND_SLOTS:
        raise InputError(record, f"unknown receptor kind {kind!r} (antibody, nanobody or tcr)", field="kind")
    extra = sorted(set(k for k, v in chains.items() if v) - {slot for slot, _ in KIND_SLOTS[kind]})
    if extra:
        slots = " and ".join(slot for slot, _ in KIND_SLOTS[kind])
        raise InputError(record, f"unexpected chain(s) {', '.join(extra)} for {indefinite_article(kind)} {kind} "
                                 f"(it takes {slots})", field="kind")
    given = {slot: chains.get(slot) for slot, _ in KIND_SLOTS[kind]}
    given = {slot: sequence for slot, sequence in given.items() if sequence is not None and str(sequence).strip()}
    with ThreadPoolExecutor(max_workers=len(given) or 1) as pool:
        jobs = {
            slot: pool.submit(number_chain, given[slot], f"{record} {slot} chain", allowed)
            for slot, allowed in KIND_SLOTS[kind] if slot in given
        }
    numbered = []
    for slot, _ in KIND_SLOTS[kind]:
        if slot not in jobs:
            raise InputError(record, f"missing {slot} chain for {indefinite_article(kind)} {kind}", field=slot)
        try:
            numbered.append(jobs[slot].result())
        except InputError as error:
            raise InputError(error.record, error.reason, field=slot) from None
    assert len(numbered) == len(KIND_CHAIN_IDS[kind])
    if kind == "nanobody":
        heavy = numbered[0]
        hallmarks = count_vhh_hallmarks(heavy.positions, heavy.sequence)
        if hallmarks < MIN_HALLMARKS:
            note = (f"{record} heavy chain: {hallmarks} of 4 VHH hallmarks (IMGT 42/49/50/52), so likely a conventional "
                    "VH, which needs its light chain; modelled as a nanobody")
            numbered[0] = NumberedChain(**{**heavy.__dict__, "notes": (*heavy.notes, note)})
    return numbered
