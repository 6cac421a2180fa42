"""Batch input: FASTA / CSV / TSV records -> receptors with numbered V domains.

Parsing never raises for a bad record: each `Record` either holds its chains or a one-line
`error`. Only a file that cannot be read as a whole (missing, not text, no usable columns)
raises `InputError`.

FASTA
    >NAME|H  + >NAME|L      paired records (|A + |B for TCRs; also |heavy, |light, |alpha, |beta)
    >NAME   HEAVY:LIGHT     one record, chains separated by ':' (or ALPHA:BETA)
    >NAME   SEQUENCE        one chain: a nanobody, or an scFv (both domains are found)
CSV / TSV
    columns `name` plus `heavy`, `light` and/or `alpha`, `beta` (optionally `kind`).

`resolve_record` numbers a record's chains and decides its kind: every V domain in every
sequence is found (an scFv gives two, constant regions, tags and signal peptides are cut off),
then TCR domains -> tcr, heavy + light -> antibody, a lone heavy -> nanobody.
This module imports no torch, so worker processes that number sequences start fast.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import re
from dataclasses import dataclass, field

from immunofold.constants import KINDS
from immunofold.sequences import InputError, NumberedChain, clean_sequence, find_domains

FASTA_SUFFIXES = (".fa", ".fasta", ".faa", ".fas", ".fna", ".seq", ".fsa")
CSV_SUFFIXES = (".csv",)
TSV_SUFFIXES = (".tsv", ".tab", ".txt")
KIND_CHOICES = ("auto",) + KINDS

# FASTA header suffix / CSV column -> chain slot
SLOT_ALIASES = {
    "h": "heavy", "heavy": "heavy", "vh": "heavy", "vhh": "heavy", "heavy_seq": "heavy", "heavy_chain": "heavy",
    "l": "light", "light": "light", "vl": "light", "k": "light", "kappa": "light", "lambda": "light",
    "light_seq": "light", "light_chain": "light",
    "a": "alpha", "alpha": "alpha", "alpha_seq": "alpha", "tra": "alpha", "alpha_chain": "alpha",
    "b": "beta", "beta": "beta", "beta_seq": "beta", "trb": "beta", "beta_chain": "beta",
}
NAME_COLUMNS = ("name", "id", "record", "sequence_id")
KIND_COLUMNS = ("kind", "type")
MAX_NAME_LENGTH = 200
MAX_REASON_LENGTH = 300
_SLOT_CLASSES = {"heavy": ("heavy",), "light": ("kappa", "lambda"), "alpha": ("alpha",), "beta": ("beta",)}


@dataclass(frozen=True)
class Record:
    """One receptor to model, in input order (`index`)."""

    index: int
    name: str
    chains: tuple[tuple[str | None, str], ...] = ()  # (slot or None if unlabelled, raw sequence)
    kind: str | None = None  # per-record kind from a CSV `kind` column, else None
    source: str = ""  # where it came from: "line 12", "row 3"
    error: str | None = None  # one-line reason when the record is unusable as read

    def fingerprint(self, **options) -> str:
        """A stable hash of the record and the options that shape its output."""
        payload = json.dumps([self.name, self.chains, self.kind, self.error, sorted(options.items())], default=str)
        return hashlib.sha256(payload.encode()).hexdigest()[:24]


@dataclass
class Resolved:
    """A record whose chains are numbered: ready for the model."""

    kind: str
    chains: list[NumberedChain]
    notes: list[str] = field(default_factory=list)


def one_line(text: str, limit: int = MAX_REASON_LENGTH) -> str:
    """Collapse whitespace and control characters to single spaces; cut long text."""
    text = re.sub(r"[\x00-\x1f\x7f\s]+", " ", str(text)).strip()
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _clean_name(name: str) -> str:
    return one_line(name, MAX_NAME_LENGTH)


# --------------------------------------------------------------------------------------------
# file reading
# --------------------------------------------------------------------------------------------
def read_text(path: str | os.PathLike) -> str:
    try:
        with open(path, "rb") as handle:
            data = handle.read()
    except FileNotFoundError:
        raise InputError(str(path), "input file not found") from None
    except IsADirectoryError:
        raise InputError(str(path), "is a folder, not an input file") from None
    except OSError as error:
        raise InputError(str(path), f"cannot read input file ({one_line(error.strerror or error)})") from None
    if b"\x00" in data[:4096]:
        raise InputError(str(path), "is a binary file, not FASTA/CSV/TSV text")
    return data.decode("utf-8-sig", errors="replace")


def detect_format(path: str | os.PathLike, text: str) -> str:
    """'fasta', 'csv' or 'tsv': from the suffix, else from the content."""
    suffix = os.path.splitext(str(path))[1].lower()
    first = next((line for line in text.splitlines() if line.strip()), "")
    if suffix in FASTA_SUFFIXES or first.lstrip().startswith(">"):
        return "fasta"
    if suffix in CSV_SUFFIXES:
        return "csv"
    if suffix in TSV_SUFFIXES or "\t" in first:
        return "tsv"
    if "," in first:
        return "csv"
    raise InputError(str(path), "cannot tell the input format: expected FASTA ('>' headers) or a CSV/TSV with a header row")


def parse_input(path: str | os.PathLike, fmt: str | None = None) -> list[Record]:
    """Records of a FASTA/CSV/TSV file, in input order (bad ones carry `error`)."""
    text = read_text(path)
    if not text.strip():
        raise InputError(str(path), "input file is empty")
    fmt = fmt or detect_format(path, text)
    if fmt == "fasta":
        records = parse_fasta(text)
    elif fmt in ("csv", "tsv"):
        records = parse_table(text, "\t" if fmt == "tsv" else ",", label=str(path))
    else:
        raise InputError(str(path), f"unknown input format {fmt!r} (fasta, csv or tsv)")
    if not records:
        raise InputError(str(path), f"no records found in this {fmt.upper()} file")
    return records


def input_notes(records: list[Record], kind: str = "auto") -> list[str]:
    """What the user should hear once about the input as a whole (not about one record)."""
    slots = {slot for record in records for slot, _ in record.chains}
    from_table = any(record.source.startswith("row") for record in records)
    if from_table and slots == {"heavy"} and kind == "auto":
        return ["no light column: treating heavy chains as nanobodies (use --kind antibody to require light chains)"]
    return []


# --------------------------------------------------------------------------------------------
# FASTA
# --------------------------------------------------------------------------------------------
def _split_header(header: str) -> tuple[str, str | None]:
    """(name, slot or None) from a FASTA header: 'trastuzumab|H description', 'my antibody|L', 'nb1 text'."""
    header = header.strip()
    token = header.split()[0] if header.split() else ""
    if "|" in token:
        name, suffix = token.rsplit("|", 1)
        slot = SLOT_ALIASES.get(suffix.strip().lower())
        if slot is not None:
            return _clean_name(name), slot
    if "|" in header:  # a name with spaces: 'my antibody|H'
        name, suffix = header.rsplit("|", 1)
        words = suffix.split()
        slot = SLOT_ALIASES.get(words[0].lower()) if words else None
        if slot is not None and name.strip():
            return _clean_name(name), slot
    return _clean_name(token), None


def parse_fasta(text: str) -> list[Record]:
    entries: list[dict] = []  # raw FASTA entries in file order
    stray: list[int] = []
    current = None
    for number, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        if not stripped or stripped.startswith(";"):
            continue
        if stripped.startswith(">"):
            name, slot = _split_header(stripped[1:])
            current = {"name": name, "slot": slot, "lines": [], "line": number}
            entries.append(current)
        elif current is None:
            stray.append(number)
        else:
            current["lines"].append(stripped)

    groups: list[dict] = []  # one per receptor, in order of first appearance
    by_name: dict[str, dict] = {}
    for entry in entries:
        sequence = "".join(entry["lines"])
        source = f"line {entry['line']}"
        name, slot = entry["name"], entry["slot"]
        if not name:
            groups.append({"name": "", "parts": [], "source": source, "error": "FASTA header without a name"})
            continue
        group = by_name.get(name)
        if group is not None:
            used = [s for s, _ in group["parts"]]
            clash = slot is None or None in used or slot in used or group["error"]
            if clash:
                groups.append({"name": name, "parts": [(slot, sequence)], "source": source, "error": "duplicate name"})
                continue
            group["parts"].append((slot, sequence))
            continue
        group = {"name": name, "parts": [(slot, sequence)], "source": source, "error": None}
        by_name[name] = group
        groups.append(group)

    records = []
    if stray:
        shown = ", ".join(str(n) for n in stray[:5]) + (" ..." if len(stray) > 5 else "")
        records.append(Record(0, f"line {stray[0]}", source=f"line {stray[0]}",
                              error=f"{len(stray)} sequence line(s) before the first '>' header (line {shown})"))
    for group in groups:
        parts = []
        for slot, sequence in group["parts"]:
            if slot is None and ":" in sequence:
                parts += [(None, piece) for piece in sequence.split(":")]
            else:
                parts.append((slot, sequence))
        records.append(Record(len(records), group["name"], tuple(parts), None, group["source"], group["error"]))
    return records


# --------------------------------------------------------------------------------------------
# CSV / TSV
# --------------------------------------------------------------------------------------------
def parse_table(text: str, delimiter: str, label: str = "input") -> list[Record]:
    try:
        rows = list(csv.reader(io.StringIO(text), delimiter=delimiter))
    except csv.Error as error:
        raise InputError(label, f"cannot read as {'TSV' if delimiter == chr(9) else 'CSV'} ({one_line(error)})") from None
    rows = [row for row in rows if any(cell.strip() for cell in row)]
    if not rows:
        raise InputError(label, "input file is empty")
    header = [cell.strip().lower() for cell in rows[0]]
    name_col = next((header.index(c) for c in NAME_COLUMNS if c in header), None)
    kind_col = next((header.index(c) for c in KIND_COLUMNS if c in header), None)
    slot_cols = [(i, SLOT_ALIASES[c]) for i, c in enumerate(header) if c in SLOT_ALIASES]
    if name_col is None or not slot_cols:
        shown = ", ".join(repr(c) for c in header[:8])
        raise InputError(
            label, f"needs a 'name' column and 'heavy'/'light' or 'alpha'/'beta' columns; header has {shown}"
        )
    seen_slots = [slot for _, slot in slot_cols]
    if len(set(seen_slots)) != len(seen_slots):
        raise InputError(label, "the header names the same chain in more than one column")

    records: list[Record] = []
    names: set[str] = set()
    for row_number, row in enumerate(rows[1:], start=2):
        source = f"row {row_number}"
        name = _clean_name(row[name_col]) if name_col < len(row) else ""
        error = None
        if len(row) != len(header):
            error = f"has {len(row)} fields, the header has {len(header)}"
        elif not name:
            error = "empty name"
        elif name in names:
            error = "duplicate name"
        kind = row[kind_col].strip().lower() if kind_col is not None and kind_col < len(row) else ""
        if error is None and kind and kind not in KIND_CHOICES:
            error = f"unknown kind {kind!r} (antibody, nanobody, tcr or auto)"
        chains = tuple((slot, row[i]) for i, slot in slot_cols if i < len(row) and row[i].strip())
        if error is None and not chains:
            error = "no sequence in any chain column"
        if error is None:
            names.add(name)
        records.append(Record(len(records), name or source, chains, kind if kind not in ("", "auto") else None, source, error))
    return records


# --------------------------------------------------------------------------------------------
# numbering and kind
# --------------------------------------------------------------------------------------------
def _describe(domains: list[tuple[str | None, NumberedChain]]) -> str:
    return "+".join(d.chain_class for _, d in domains) or "none"


def resolve_record(record: Record, kind: str = "auto") -> Resolved:
    """Number the chains of a record and decide its kind; raises InputError('<name>', reason)."""
    name = record.name or record.source
    if record.error:
        raise InputError(name, record.error)
    kind = record.kind or kind
    if kind not in KIND_CHOICES:
        raise InputError(name, f"unknown receptor kind {kind!r} (auto, antibody, nanobody or tcr)")
    if not record.chains:
        raise InputError(name, "empty sequence")

    domains: list[tuple[str | None, NumberedChain]] = []  # (label, domain)
    for i, (slot, sequence) in enumerate(record.chains):
        where = f"{name} {slot} chain" if slot else (f"{name} chain {i + 1}" if len(record.chains) > 1 else name)
        cleaned = clean_sequence(sequence, where)
        found = find_domains(cleaned, where)
        if not found:
            raise InputError(where, "no antibody or TCR variable domain found (not an immune receptor V domain?)")
        domains += [(slot, d) for d in found]

    by_class: dict[str, list[tuple[str | None, NumberedChain]]] = {}
    for slot, domain in domains:
        group = "light" if domain.chain_class in ("kappa", "lambda") else domain.chain_class
        by_class.setdefault(group, []).append((slot, domain))
    counts = {k: len(v) for k, v in by_class.items()}
    found = _describe(domains)
    has_tcr = "alpha" in counts or "beta" in counts
    has_ab = "heavy" in counts or "light" in counts
    if has_tcr and has_ab:
        raise InputError(name, f"mixes antibody and TCR domains ({found})")
    if any(n > 1 for n in counts.values()):
        raise InputError(name, f"holds {len(domains)} V domains ({found}); expected heavy+light, one heavy, or alpha+beta")
    if kind == "auto":
        kind = "tcr" if has_tcr else ("antibody" if "light" in counts else "nanobody")
    wanted = {"antibody": ("heavy", "light"), "nanobody": ("heavy",), "tcr": ("alpha", "beta")}[kind]
    missing = [slot for slot in wanted if slot not in counts]
    extra = [slot for slot in counts if slot not in wanted]
    if kind == "nanobody" and "light" in counts and "heavy" in counts:
        raise InputError(name, "has heavy+light domains, a nanobody is one heavy chain (use --kind antibody or auto)")
    if missing and not extra and kind == "antibody" and counts == {"heavy": 1}:
        raise InputError(name, "lone heavy chain: an antibody needs a light chain too (or use --kind nanobody/auto)")
    if missing and counts == {"light": 1}:
        raise InputError(name, "lone light chain: a light chain needs its heavy chain partner")
    if missing or extra:
        raise InputError(
            name, f"found {found} domain(s) but a {kind} needs {'+'.join(wanted)}"
            + (f" (missing {', '.join(missing)})" if missing else "")
        )

    chains, notes = [], []
    for slot in wanted:
        label, domain = by_class[slot][0]
        where = f"{name} {slot} chain"
        chain_notes = []
        if label is not None and domain.chain_class not in _SLOT_CLASSES[label]:
            chain_notes.append(f"{name}: the chain given as {label} is a {domain.chain_class} chain, used as such")
        if domain.trimmed_before or domain.trimmed_after:
            chain_notes.append(
                f"{where}: kept the V domain (IMGT 1-128), removed {domain.trimmed_before} residue(s) before "
                f"and {domain.trimmed_after} after"
            )
        chains.append(NumberedChain(**{**domain.__dict__, "notes": tuple(chain_notes)}))
        notes += chain_notes
    return Resolved(kind, chains, notes)


def input_error_reason(error: InputError, name: str) -> str:
    """The one-line reason of an InputError, without the record name (which has its own column)."""
    where = str(error.record)
    if where == name:
        return one_line(error.reason)
    if where.startswith(name + " "):
        where = where[len(name) + 1 :]
    return one_line(f"{where}: {error.reason}")


def resolve_or_reason(record: Record, kind: str = "auto") -> Resolved | str:
    """`resolve_record`, but a one-line reason string instead of an exception (for worker processes)."""
    try:
        return resolve_record(record, kind)
    except InputError as error:
        return input_error_reason(error, record.name or record.source)
    except Exception as error:  # a numbering library failure must not stop the batch  # noqa: BLE001
        return one_line(f"numbering failed ({type(error).__name__}: {error})")


# --------------------------------------------------------------------------------------------
# output file names
# --------------------------------------------------------------------------------------------
_UNSAFE = re.compile(r"[^A-Za-z0-9._+-]+")
_WINDOWS_RESERVED = {"con", "prn", "aux", "nul"} | {f"com{i}" for i in range(10)} | {f"lpt{i}" for i in range(10)}


def safe_name(name: str, max_length: int = 100) -> str:
    """A file-name stem from a record name: no path separators, no leading dots, bounded length."""
    stem = _UNSAFE.sub("_", name).strip("._-")[:max_length].rstrip("._-")
    if not stem or stem.lower() in _WINDOWS_RESERVED or stem.lower() in ("summary", "failures", "overview"):
        stem = f"record_{stem}" if stem else "record"
    return stem


def assign_file_stems(names: list[str]) -> list[str]:
    """Unique safe file stems for names (in order); a name whose stem collides, case-insensitively,
    with an earlier one, or that had to be changed, gets a short hash of the original appended."""
    stems, used = [], set()
    for name in names:
        stem = safe_name(name)
        if stem != name or stem.lower() in used:
            stem = f"{stem[:90]}_{hashlib.sha1(name.encode()).hexdigest()[:8]}"
        while stem.lower() in used:
            stem = f"{stem}_{hashlib.sha1(stem.encode()).hexdigest()[:4]}"
        used.add(stem.lower())
        stems.append(stem)
    return stems
