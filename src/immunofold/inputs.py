"""Batch input: FASTA / CSV / TSV / AIRR records -> receptors with numbered V domains.

Parsing never raises for a bad record: each `Record` either holds its chains or a one-line
`error`. Only a file that cannot be read as a whole (missing, not text, no usable columns)
raises `InputError`.

FASTA
    >NAME|H  + >NAME|L      paired records (|A + |B for TCRs; also |heavy, |light, |alpha, |beta)
    >NAME   HEAVY:LIGHT     one record, chains separated by ':' (or ALPHA:BETA)
    >NAME   SEQUENCE        one chain: a nanobody, or an scFv (both domains are found)
CSV / TSV
    columns `name` plus `heavy`, `light` and/or `alpha`, `beta` (optionally `kind`).
AIRR rearrangement TSV (AIRR Community standard; a TSV whose header has `sequence_id` and `locus`)
    one row per chain: `sequence_id`, `locus` (IGH, IGK, IGL, TRA, TRB), `productive`, and
    `sequence_alignment_aa` or `sequence_aa`. Rows sharing a `cell_id` are one receptor; a heavy chain
    without a partner is modelled as a nanobody only when it is VHH-like (`sequences.VHH_HALLMARKS`).

Files are read as a stream (`iter_records`): a receptor's chains must lie within PAIRING_WINDOW entries.

`resolve_record` numbers a record's chains and decides its kind: every V domain in every
sequence is found (an scFv gives two, constant regions, tags and signal peptides are cut off),
then TCR domains -> tcr, heavy + light -> antibody, a lone heavy -> nanobody.
This module imports no torch, so worker processes that number sequences start fast.
"""

from __future__ import annotations

import csv
import errno
import gzip
import hashlib
import io
import json
import os
import re
import sqlite3
import tempfile
import time
from collections import deque
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field

from immunofold.constants import KINDS
from immunofold.sequences import (MIN_HALLMARKS, InputError, NumberedChain, clean_sequence, cleaning_notes,
                                  count_vhh_hallmarks, find_domains, indefinite_article, no_domain_error,
                                  number_together)

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
PAIRING_WINDOW = 10_000  # entries: a receptor whose partner chain comes later than this is given out alone
AIRR_LOCI = {"IGH": "heavy", "IGK": "light", "IGL": "light", "TRA": "alpha", "TRB": "beta"}
AIRR_SEQUENCE_COLUMNS = ("sequence_alignment_aa", "sequence_aa")
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
    vhh_only: bool = False  # an unpaired AIRR heavy chain: modelled only if VHH-like, never as a VH without its VL

    def fingerprint(self, **options) -> str:
        """A stable hash of the record and the options that shape its output."""
        fields = [self.name, self.chains, self.kind, self.error] + (["vhh_only"] if self.vhh_only else [])
        payload = json.dumps([*fields, sorted(options.items())], default=str)
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
# file reading: line by line, so a file of any size is read in bounded memory
# --------------------------------------------------------------------------------------------
GZIP_MAGIC = b"\x1f\x8b"
OTHER_ARCHIVES = {b"PK\x03\x04": "zip", b"BZh": "bzip2", b"\xfd7zXZ\x00": "xz", b"(\xb5/\xfd": "zstd"}


def _open_text(path: str | os.PathLike):
    """The file as text lines (UTF-8, BOM dropped, bad bytes replaced; gzip-compressed files decompressed as they are
    read); InputError if it cannot be read or is binary."""
    try:
        with open(path, "rb") as handle:
            compressed = handle.read(2) == GZIP_MAGIC
        opener = gzip.open if compressed else open
        with opener(path, "rb") as handle:
            head = handle.read(4096)
        text = opener(path, "rt", encoding="utf-8-sig", errors="replace", newline="")
    except FileNotFoundError:
        raise InputError(str(path), "input file not found") from None
    except IsADirectoryError:
        raise InputError(str(path), "is a folder, not an input file") from None
    except (OSError, EOFError) as error:  # gzip.BadGzipFile is an OSError; a cut-off gzip stream an EOFError
        raise InputError(str(path), f"cannot read input file ({one_line(getattr(error, 'strerror', None) or error)})") from None
    archive = next((name for magic, name in OTHER_ARCHIVES.items() if head.startswith(magic)), None)
    if archive or b"\x00" in head:
        text.close()
        raise InputError(str(path), f"is a {archive} archive: only gzip is read, unpack it first" if archive
                         else "is a binary file, not FASTA/CSV/TSV text")
    return text


def _first_line(path: str | os.PathLike) -> str:
    with _open_text(path) as handle:
        return next((line for line in handle if line.strip()), "")


def detect_format(path: str | os.PathLike, first: str) -> str:
    """'fasta', 'csv', 'tsv' or 'airr' from the suffix and the first non-empty line."""
    suffix = os.path.splitext(str(path).removesuffix(".gz").removesuffix(".GZ"))[1].lower()
    header = {cell.strip().lower() for cell in first.split("\t")}
    if suffix in FASTA_SUFFIXES or first.lstrip().startswith(">"):
        return "fasta"
    if "sequence_id" in header and header & {"locus", "cell_id", "productive", *AIRR_SEQUENCE_COLUMNS}:
        return "airr"  # (a missing required AIRR column is then named by the AIRR reader)
    if suffix in CSV_SUFFIXES:
        return "csv"
    if suffix in TSV_SUFFIXES or "\t" in first:
        return "tsv"
    if "," in first:
        return "csv"
    raise InputError(str(path), "cannot tell the input format: expected FASTA ('>' headers) or a CSV/TSV with a header row")


def iter_records(path: str | os.PathLike, fmt: str | None = None) -> Iterator[Record]:
    """Records of a FASTA/CSV/TSV/AIRR file, in input order (bad ones carry `error`), read as a stream.

    Memory is bounded: at most PAIRING_WINDOW receptors wait for a partner chain; the duplicate check keeps the names
    in a `NameSet` (on disk past about 2 MB). Raises InputError for a file that cannot be read as a whole (when iteration starts)."""
    first = _first_line(path)
    if not first.strip():
        raise InputError(str(path), "input file is empty")
    fmt = fmt or detect_format(path, first)
    readers = {"fasta": lambda h: _fasta_records(_lines(h)), "csv": lambda h: _table_records(h, ",", str(path)),
               "tsv": lambda h: _table_records(h, "\t", str(path)), "airr": lambda h: _airr_records(h, str(path))}
    if fmt not in readers:
        raise InputError(str(path), f"unknown input format {fmt!r} (fasta, csv, tsv or airr)")
    count = 0
    with _open_text(path) as handle:
        try:
            for record in readers[fmt](handle):
                count += 1
                yield record
        except (EOFError, gzip.BadGzipFile) as error:  # a compressed input cut off or damaged after its start
            raise InputError(str(path), f"compressed input is damaged after {count} records ({one_line(error)})") from None
    if not count:
        raise InputError(str(path), f"no records found in this {fmt.upper()} file")


def parse_input(path: str | os.PathLike, fmt: str | None = None) -> list[Record]:
    """Every record of a FASTA/CSV/TSV/AIRR file, in input order (`iter_records` as a list)."""
    return list(iter_records(path, fmt))


def input_notes(records: Iterable[Record], kind: str = "auto") -> list[str]:
    """What the user should hear once about the input as a whole (not about one record); one pass over `records`."""
    slots, from_table = set(), False
    for record in records:
        slots.update(slot for slot, _ in record.chains if not record.vhh_only)
        from_table = from_table or (record.source.startswith("row") and not record.vhh_only)
    if from_table and slots == {"heavy"} and kind == "auto":
        return ["no light chains in the table: treating heavy chains as nanobodies (use --kind antibody to require light chains)"]
    return []


def _lines(handle) -> Iterator[str]:
    """Lines as str.splitlines() cuts them, read from a file handle."""
    for raw in handle:
        yield from raw.splitlines() or [""]


class NameSet:
    """The names seen so far in a stream, as 8-byte digests in a private temporary SQLite database (deleted when the
    set is): memory stays at SQLite's page cache (about 2 MB) however many names pass; past that the digests spill
    to a file in the temporary folder (about 15 MB per 10^6 names)."""

    def __init__(self):
        self._db = sqlite3.connect("", check_same_thread=False)  # "": temporary, on disk only when it outgrows the cache
        self._db.execute("PRAGMA journal_mode = OFF")
        self._db.execute("CREATE TABLE names (digest INTEGER PRIMARY KEY)")

    @staticmethod
    def _digest(name: str) -> int:
        return int.from_bytes(hashlib.blake2b(name.encode(), digest_size=8).digest(), "little", signed=True)

    def __contains__(self, name: str) -> bool:
        return self._execute("SELECT 1 FROM names WHERE digest = ?", name).fetchone() is not None

    def add(self, name: str) -> None:
        self._execute("INSERT OR IGNORE INTO names VALUES (?)", name)

    def _execute(self, statement: str, name: str) -> sqlite3.Cursor:
        """OSError (ENOSPC, else EIO) when the temporary file cannot grow: the machine's fault, not the input's."""
        try:
            return self._db.execute(statement, (self._digest(name),))
        except sqlite3.OperationalError as error:
            code = errno.ENOSPC if "full" in str(error) else errno.EIO
            raise OSError(code, f"cannot keep the names seen in the temporary folder {tempfile.gettempdir()} "
                                f"({error})") from None


class _Pairing:
    """Joins entries that share a name (FASTA NAME|H + NAME|L, AIRR rows of one cell) into one record each, in order
    of first appearance. A receptor is complete with two labelled chains (or one unlabelled one); one that waits
    longer than PAIRING_WINDOW entries for its partner is given out as it is, and a later entry of the same name
    becomes a record of its own with `clash` as its error (a later labelled pair of that name, one such record)."""

    def __init__(self, clash: str, heavy_alone_vhh_only: bool = False):
        self.clash = clash
        self.heavy_alone_vhh_only = heavy_alone_vhh_only
        self.waiting: deque[dict] = deque()  # groups in order of first appearance, not given out yet
        self.open: dict[str, dict] = {}  # name -> group that may still take a chain
        self.seen = NameSet()
        self.entries = 0
        self.index = 0

    def add(self, name: str, slot: str | None, sequence: str, source: str, error: str | None = None,
            alone: bool = False) -> Iterator[Record]:
        """Take one entry; give out the records that are complete. alone: the entry is a record by itself."""
        self.entries += 1
        group = self.open.get(name) if name and error is None else None
        if group is not None and (slot is None or slot in [s for s, _ in group["parts"]]):
            group = None
            error = self.clash
        elif group is None and error is None and name and name in self.seen:
            error = self.clash
        if group is not None:
            group["parts"].append((slot, sequence))
            if len(group["parts"]) == 2:
                del self.open[name]
        else:
            group = {"name": name, "parts": [(slot, sequence)], "source": source, "error": error, "entry": self.entries}
            if error is None and name:
                self.seen.add(name)
            # a labelled chain waits for its partner; so does a repeated name's, so that a repeated pair is one failure
            if name and slot is not None and not alone and (error is None or (error == self.clash and name not in self.open)):
                self.open[name] = group
            self.waiting.append(group)
        return self._give_out(final=False)

    def _give_out(self, final: bool) -> Iterator[Record]:
        while self.waiting:
            group = self.waiting[0]
            if not final and self.open.get(group["name"]) is group and self.entries - group["entry"] < PAIRING_WINDOW:
                return
            self.waiting.popleft()
            if self.open.get(group["name"]) is group:
                del self.open[group["name"]]
            yield self._record(group)

    def finish(self) -> Iterator[Record]:
        return self._give_out(final=True)

    def _record(self, group: dict) -> Record:
        parts = []
        for slot, sequence in group["parts"]:
            if slot is None and ":" in sequence:
                parts += [(None, piece) for piece in sequence.split(":")]
            else:
                parts.append((slot, sequence))
        vhh_only = self.heavy_alone_vhh_only and group["error"] is None and [slot for slot, _ in parts] == ["heavy"]
        record = Record(self.index, group["name"], tuple(parts), None, group["source"], group["error"], vhh_only)
        self.index += 1
        return record


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
    """Records of FASTA text (see the module docs)."""
    return list(_fasta_records(text.splitlines()))


def _fasta_records(lines: Iterable[str]) -> Iterator[Record]:
    pairing = _Pairing("duplicate name")
    stray: list[int] = []
    entry = None  # [name, slot, sequence lines, line number] of the entry being read

    def close(entry) -> Iterator[Record]:
        name, slot, pieces, number = entry
        error = None if name else "FASTA header without a name"
        return pairing.add(name, slot, "".join(pieces), f"line {number}", error)

    for number, line in enumerate(lines, start=1):
        stripped = line.strip()
        if not stripped or stripped.startswith(";"):
            continue
        if stripped.startswith(">"):
            if entry is None and stray:
                shown = ", ".join(str(n) for n in stray[:5]) + (" ..." if len(stray) > 5 else "")
                yield from pairing.add(f"line {stray[0]}", None, "", f"line {stray[0]}",
                                       f"{len(stray)} sequence line(s) before the first '>' header (line {shown})")
            if entry is not None:
                yield from close(entry)
            entry = [*_split_header(stripped[1:]), [], number]
        elif entry is None:
            stray.append(number)
        else:
            entry[2].append(stripped)
    if entry is not None:
        yield from close(entry)
    yield from pairing.finish()


# --------------------------------------------------------------------------------------------
# CSV / TSV
# --------------------------------------------------------------------------------------------
def parse_table(text: str, delimiter: str, label: str = "input") -> list[Record]:
    """Records of CSV/TSV text (see the module docs)."""
    return list(_table_records(io.StringIO(text), delimiter, label))


def _rows(handle, delimiter: str, label: str) -> Iterator[tuple[int, list[str]]]:
    """(row number among non-blank rows, cells) of a CSV/TSV stream; the header is row 1."""
    number = 0
    try:
        for row in csv.reader(handle, delimiter=delimiter):
            if any(cell.strip() for cell in row):
                number += 1
                yield number, row
    except csv.Error as error:
        raise InputError(label, f"cannot read as {'TSV' if delimiter == chr(9) else 'CSV'} ({one_line(error)})") from None


def _table_records(handle, delimiter: str, label: str) -> Iterator[Record]:
    rows = _rows(handle, delimiter, label)
    first = next(rows, None)
    if first is None:
        raise InputError(label, "input file is empty")
    header = [cell.strip().lower() for cell in first[1]]
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

    names = NameSet()
    for index, (row_number, row) in enumerate(rows):
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
        yield Record(index, name or source, chains, kind if kind not in ("", "auto") else None, source, error)


# --------------------------------------------------------------------------------------------
# AIRR Community rearrangement TSV
# --------------------------------------------------------------------------------------------
def _airr_records(handle, label: str) -> Iterator[Record]:
    """One record per cell (rows joined by `cell_id`) or per row without a cell_id; each row is checked against the
    AIRR schema (airr library) and must be productive. A lone heavy chain must be VHH-like (see `vhh_only`)."""
    from airr.schema import RearrangementSchema, ValidationError

    rows = _rows(handle, "\t", label)
    first = next(rows, None)
    header = [cell.strip() for cell in first[1]] if first else []
    sequence_columns = [c for c in AIRR_SEQUENCE_COLUMNS if c in header]
    missing = [c for c in ("sequence_id", "locus", "productive") if c not in header]
    if missing or not sequence_columns:
        missing += [] if sequence_columns else [" or ".join(AIRR_SEQUENCE_COLUMNS)]
        raise InputError(label, f"AIRR rearrangement file without the column(s) {', '.join(missing)}")
    pairing = _Pairing("duplicate name (a second row with this sequence_id, or a second chain of this locus in the "
                       "cell)", heavy_alone_vhh_only=True)
    for row_number, cells in rows:
        source = f"row {row_number}"
        if len(cells) != len(header):
            yield from pairing.add("", None, "", source, f"has {len(cells)} fields, the header has {len(header)}")
            continue
        row = dict(zip(header, cells))
        name = _clean_name(row["sequence_id"]) or source
        locus = row["locus"].strip().upper()
        sequence = next((row[c] for c in sequence_columns if row[c].strip()), "")  # the alignment first
        sequence = sequence.replace(".", "").replace("-", "")  # an alignment's gaps are the format's, not a typo's
        error = None
        try:
            RearrangementSchema.validate_row(row)
        except ValidationError as invalid:
            error = f"not a valid AIRR row ({one_line(invalid)})"
        if error is None and RearrangementSchema.to_bool(row["productive"]) is False:
            error = "not productive (productive = F)"
        if error is None and locus not in AIRR_LOCI:
            error = f"locus {locus or 'empty'!r} is not one of {', '.join(AIRR_LOCI)}"
        if error is None and not sequence:
            error = f"empty {' and '.join(sequence_columns)}"
        cell = row.get("cell_id", "").strip()
        if error is not None or not cell:
            yield from pairing.add(name, AIRR_LOCI.get(locus), sequence, source, error, alone=True)
        else:
            yield from pairing.add(_clean_name(cell), AIRR_LOCI[locus], sequence, source)
    yield from pairing.finish()
# --------------------------------------------------------------------------------------------
# numbering and kind
# --------------------------------------------------------------------------------------------
def _describe(domains: list[tuple[str | None, NumberedChain]]) -> str:
    return "+".join(d.chain_class for _, d in domains) or "none"


def resolve_record(record: Record, kind: str = "auto", numbered: Mapping[str, list] | None = None) -> Resolved:
    """Number the chains of a record and decide its kind; raises InputError('<name>', reason). numbered: anarcism's
    domains of sequences numbered beforehand (`sequences.number_together`), used where they hold a chain."""
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
        found = find_domains(cleaned, where, numbered)
        if not found:
            raise no_domain_error(cleaned, where, numbered)
        dropped = cleaning_notes(sequence, where)  # each domain of the sequence carries them
        domains += [(slot, NumberedChain(**{**d.__dict__, "notes": (*d.notes, *dropped)})) for d in found]

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
    guessed = kind == "auto"
    if guessed:
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

    unlike_vhh = None  # a lone heavy chain taken for a nanobody although it lacks the hallmarks: say so
    if kind == "nanobody" and (record.vhh_only or guessed):
        heavy = by_class["heavy"][0][1]
        hallmarks = count_vhh_hallmarks(heavy.positions, heavy.sequence)
        if hallmarks < MIN_HALLMARKS and record.vhh_only:
            raise InputError(name, f"unpaired heavy chain that is not VHH-like ({hallmarks} of 4 VHH hallmarks at IMGT "
                             "42/49/50/52): a conventional VH needs its light chain (same cell_id)")
        if hallmarks < MIN_HALLMARKS:
            unlike_vhh = (f"{name}: a lone heavy chain with {hallmarks} of 4 VHH hallmarks (IMGT 42/49/50/52), modelled "
                          "as a nanobody; a conventional VH needs its light chain "
                          + ("(a light sequence in its row)" if record.source.startswith("row") else f"({name}|L)"))
    chains, notes = [], []
    for slot in wanted:
        label, domain = by_class[slot][0]
        where = f"{name} {slot} chain"
        chain_notes = [*domain.notes, *([unlike_vhh] if unlike_vhh and slot == "heavy" else [])]
        if label is not None and domain.chain_class not in _SLOT_CLASSES[label]:
            chain_notes.append(f"{name}: the chain given as {label} is {indefinite_article(domain.chain_class)} "
                               f"{domain.chain_class} chain, used as such")
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


def resolve_or_reason(record: Record, kind: str = "auto", numbered: Mapping[str, list] | None = None) -> Resolved | str:
    """`resolve_record`, but a one-line reason string instead of an exception (for worker processes)."""
    try:
        return resolve_record(record, kind, numbered)
    except InputError as error:
        return input_error_reason(error, record.name or record.source)
    except Exception as error:  # a numbering library failure must not stop the batch  # noqa: BLE001
        return one_line(f"numbering failed ({type(error).__name__}: {error})")


def resolve_records(records: list[Record], kind: str = "auto") -> list[tuple[Resolved | str, float]]:
    """`resolve_or_reason` of each record, with the chains of all of them numbered together
    (`sequences.number_together`: one anarcism call; from 4 records on about a quarter less CPU per chain), and the seconds spent on each record (its own, plus an even share of the
    joint numbering)."""
    start = time.perf_counter()
    numbered = number_together(_cleaned_chains(records))
    share = (time.perf_counter() - start) / max(len(records), 1)
    results = []
    for record in records:
        start = time.perf_counter()
        result = resolve_or_reason(record, kind, numbered)
        results.append((result, time.perf_counter() - start + share))
    return results


def _cleaned_chains(records: list[Record]) -> Iterator[str]:
    """The cleaned sequence of every chain of the records that has one (`clean_sequence` refuses the others, which
    then fail in `resolve_record` with their reason)."""
    for record in records:
        if record.error:
            continue
        for _, sequence in record.chains:
            try:
                yield clean_sequence(sequence, "")
            except InputError:
                continue


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


class StemAssigner:
    """Unique safe file stems for names given one at a time, in order: a name whose stem collides, case-insensitively,
    with an earlier one, or that had to be changed, gets a short hash of the original appended. The stems
    given out are kept in a `NameSet`, so a stream of any length is named in bounded memory."""

    def __init__(self):
        self.used = NameSet()

    def __call__(self, name: str) -> str:
        stem = safe_name(name)
        if stem != name or stem.lower() in self.used:
            stem = f"{stem[:90]}_{hashlib.sha1(name.encode()).hexdigest()[:8]}"
        while stem.lower() in self.used:
            stem = f"{stem}_{hashlib.sha1(stem.encode()).hexdigest()[:4]}"
        self.used.add(stem.lower())
        return stem


def assign_file_stems(names: Iterable[str]) -> list[str]:
    """`StemAssigner` over a list of names."""
    assign = StemAssigner()
    return [assign(name) for name in names]
