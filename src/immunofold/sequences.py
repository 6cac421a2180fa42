"""Sequence checks and IMGT numbering of immune-receptor V domains (via anarcism).

`number_chain` turns one raw sequence into a `NumberedChain`: cleaned, identified as heavy,
kappa, lambda, TCR alpha or TCR beta, numbered in IMGT and cut to the V domain (IMGT 1-128).
Every rejection is an `InputError` whose message is one line naming the record and the reason.
"""

from __future__ import annotations

import re
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


def ends_with_stop(sequence: str) -> bool:
    """True when the sequence ends with one stop codon '*' (accepted and dropped by `clean_sequence`)."""
    return isinstance(sequence, str) and sequence.rstrip().endswith("*")


# anarcism's rhesus kappa/heavy profiles shift IMGT numbering by one (Cys at 24, Trp at 42);
# such domains are numbered again without them.
UNRELIABLE_SPECIES = {"rhesus"}
RELIABLE_SPECIES = [s for s in anarcism.species() if s not in UNRELIABLE_SPECIES]


def _number(sequence: str, record: str):
    """anarcism domains of a sequence, avoiding species profiles known to misnumber."""
    try:
        result = anarcism.number_sequence(sequence, id=record)
        if any(d.species in UNRELIABLE_SPECIES for d in result.domains):
            result = anarcism.number_sequence(sequence, id=record, allowed_species=RELIABLE_SPECIES)
    except anarcism.AnarcismError as error:
        raise InputError(record, f"numbering failed ({error})") from None
    return result.domains


def find_domains(sequence: str, record: str) -> list[NumberedChain]:
    """All V domains in a cleaned sequence, N- to C-terminal (one for a chain, two for an scFv)."""
    domains = []
    for domain in _number(sequence, record):
        numbered = [r for r in domain.numbering if 1 <= r.position <= 128]
        if len(numbered) < MIN_DOMAIN_LENGTH:
            continue
        chain_class = ANARCI_TO_CHAIN_CLASS.get(domain.chain_type)
        if chain_class is None:
            continue  # gamma chains: not modelled
        # anarcism may leave a residue inside an unusual insertion unnumbered; keep the numbered ones.
        index_to_position = {r.sequence_index: (r.position, r.insertion_code.strip()) for r in numbered}
        index_to_position = _with_long_cdr3_numbered(sequence, index_to_position)
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
            )
        )
    domains.sort(key=lambda d: d.trimmed_before)
    return domains


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


def _with_long_cdr3_numbered(sequence: str, index_to_position: dict) -> dict:
    """The numbering, with the CDR3 and FR4 numbered by IMGT's rule where anarcism lost them.

    anarcism's profile alignment loses the J motif after some long CDR3s (31- and 32-residue CDR-H3s on a human
    heavy chain: it numbers part of the loop as FR4 and stops at IMGT 121), so a chain whose numbering has a Cys 104
    but no Trp/Phe at 118 while the J motif follows in the sequence is renumbered from Cys 104 on:
    `imgt_cdr3_positions` for the loop, 118-128 for FR4. Hand-written: no numbering library offers this rescue."""
    by_position = {position: index for index, position in index_to_position.items()}
    cysteine, j_residue = by_position.get((104, "")), by_position.get((118, ""))
    if cysteine is None or (j_residue is not None and sequence[j_residue] in "WF"):
        return index_to_position
    motif = J_MOTIF.search(sequence, cysteine + 3)
    if motif is None or motif.start() - cysteine - 1 > MAX_RESCUED_CDR3:
        return index_to_position
    kept = {index: position for index, position in index_to_position.items() if index <= cysteine}
    loop = range(cysteine + 1, motif.start())
    kept.update(zip(loop, imgt_cdr3_positions(len(loop))))
    fr4 = range(motif.start(), min(motif.start() + FR4_LENGTH, len(sequence)))
    kept.update(zip(fr4, [(n, "") for n in range(118, 129)]))
    return kept


def number_chain(sequence: str, record: str, allowed: tuple[str, ...] | None = None) -> NumberedChain:
    """Number one chain; it must hold exactly one V domain (of an `allowed` chain class, if given)."""
    cleaned = clean_sequence(sequence, record)
    domains = find_domains(cleaned, record)
    if not domains:
        raise InputError(record, "no antibody or TCR variable domain found (not an immune receptor V domain?)")
    if len(domains) > 1:
        kinds = "+".join(d.chain_class for d in domains)
        raise InputError(record, f"holds {len(domains)} V domains ({kinds}); give one domain per chain or split the scFv")
    domain = domains[0]
    if allowed is not None and domain.chain_class not in allowed:
        raise InputError(record, f"is {_article(domain.chain_class)} {domain.chain_class} chain, expected {' or '.join(allowed)}")
    notes = []
    if ends_with_stop(sequence):
        notes.append(f"{record}: dropped the trailing stop codon '*'")
    if domain.trimmed_before or domain.trimmed_after:
        notes.append(
            f"{record}: kept the V domain (IMGT 1-128), removed {domain.trimmed_before} residue(s) before "
            f"and {domain.trimmed_after} after"
        )
    return NumberedChain(**{**domain.__dict__, "notes": tuple(notes)})


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def number_receptor(kind: str, chains: dict[str, str], record: str = "input") -> list[NumberedChain]:
    """Number the chains of one receptor of `kind`; `chains` maps slot name -> sequence.

    Slots: antibody heavy + light, nanobody heavy, tcr alpha + beta. Returns chains in the
    output order of `constants.KIND_CHAIN_IDS[kind]`. Two chains are numbered at once in two threads
    (anarcism releases the GIL); a problem is reported for the first slot that has one, as if in turn.
    """
    if kind not in KIND_SLOTS:
        raise InputError(record, f"unknown receptor kind {kind!r} (antibody, nanobody or tcr)", field="kind")
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
            raise InputError(record, f"missing {slot} chain for {_article(kind)} {kind}", field=slot)
        try:
            numbered.append(jobs[slot].result())
        except InputError as error:
            raise InputError(error.record, error.reason, field=slot) from None
    extra = sorted(set(k for k, v in chains.items() if v) - {slot for slot, _ in KIND_SLOTS[kind]})
    if extra:
        raise InputError(record, f"unexpected chain(s) {', '.join(extra)} for a {kind}", field="kind")
    assert len(numbered) == len(KIND_CHAIN_IDS[kind])
    return numbered
