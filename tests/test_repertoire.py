"""Repertoire-scale batch input and output: AIRR rearrangement TSV in, summary.parquet out, sharded structure
folders, a streamed input (FASTA pairs within the pairing window)."""

import csv

import pytest

from immunofold import batch, inputs
from immunofold.batch import run_batch
from immunofold.inputs import iter_records, parse_input

from test_batch import AB1_H, AB1_L, AB2_H, NB1, NB2, TCR1_A, TCR1_B, predictor, weights_env  # noqa: F401

pytest.importorskip("airr")


def read_csv(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def write_airr(path, rows):
    """An AIRR rearrangement TSV written by the AIRR reference library (every required field present)."""
    import airr

    fields = ["cell_id", "locus", "sequence_aa", "sequence_alignment_aa"]
    with open(path, "w") as handle:
        writer = airr.io.RearrangementWriter(handle, fields=fields)
        for row in rows:
            writer.write({**airr.schema.RearrangementSchema.template(), **row})


AIRR_ROWS = [
    # a paired antibody (one cell), a TCR (one cell), a lone VHH, a lone conventional VH, a non-productive chain
    {"sequence_id": "c1_h", "cell_id": "cell1", "locus": "IGH", "productive": True, "sequence_alignment_aa": AB1_H},
    {"sequence_id": "c2_a", "cell_id": "cell2", "locus": "TRA", "productive": True, "sequence_alignment_aa": TCR1_A},
    {"sequence_id": "c1_k", "cell_id": "cell1", "locus": "IGK", "productive": True, "sequence_alignment_aa": AB1_L},
    {"sequence_id": "c2_b", "cell_id": "cell2", "locus": "TRB", "productive": True, "sequence_alignment_aa": TCR1_B},
    {"sequence_id": "vhh1", "locus": "IGH", "productive": True, "sequence_aa": NB1},
    {"sequence_id": "vh_alone", "locus": "IGH", "productive": True, "sequence_aa": AB2_H},
    {"sequence_id": "stop", "locus": "IGH", "productive": False, "sequence_aa": NB2},
]


def test_airr_file_read_with_cells_paired(tmp_path):
    path = tmp_path / "rearrangements.tsv"
    write_airr(path, AIRR_ROWS)
    records = parse_input(path)
    assert [r.name for r in records] == ["cell1", "cell2", "vhh1", "vh_alone", "stop"]
    assert records[0].chains == (("heavy", AB1_H), ("light", AB1_L))
    assert records[1].chains == (("alpha", TCR1_A), ("beta", TCR1_B))
    assert [r.vhh_only for r in records] == [False, False, True, True, False]
    assert "not productive" in records[4].error


def test_an_airr_alignments_gaps_are_dropped_as_the_formats_own_without_a_note(tmp_path):
    """sequence_alignment_aa is IMGT-gapped ('.'): the gaps belong to the format, unlike a gap typed into a sequence,
    which gets a note (test_inputs)."""
    gapped = NB1[:26] + "....." + NB1[26:60] + "." + NB1[60:]
    path = tmp_path / "rearrangements.tsv"
    write_airr(path, [{"sequence_id": "vhh1", "locus": "IGH", "productive": True, "sequence_alignment_aa": gapped}])
    record, = parse_input(path)
    assert record.chains == (("heavy", NB1),)
    resolved, = (result for result, _ in inputs.resolve_records([record], "auto"))
    assert resolved.kind == "nanobody" and resolved.chains[0].sequence == NB1 and not resolved.notes


def test_airr_bad_rows_are_failures_not_file_errors(tmp_path):
    path = tmp_path / "bad.tsv"
    header = "sequence_id\tcell_id\tlocus\tproductive\tsequence_aa\n"
    path.write_text(header + f"a\t\tIGH\tmaybe\t{NB1}\nb\t\tTRG\tT\t{NB1}\nc\t\tIGH\tT\t\nd\t\tIGH\tT\t{NB1}\nd\t\tIGH\tT\t{NB1}\n")
    errors = {r.name + r.source: r.error for r in parse_input(path)}
    assert "not a valid AIRR row" in errors["arow 2"] and "productive" in errors["arow 2"]
    assert "locus 'TRG'" in errors["brow 3"]
    assert "empty sequence_aa" in errors["crow 4"]
    assert errors["drow 5"] is None and "duplicate name" in errors["drow 6"]
    missing = tmp_path / "no_locus.tsv"
    missing.write_text(f"sequence_id\tlocus\tsequence_aa\nx\tIGH\t{NB1}\n")
    with pytest.raises(inputs.InputError, match="productive"):
        parse_input(missing)
    without_locus = tmp_path / "no_locus_column.tsv"  # still an AIRR file (sequence_id + AIRR columns): say what it lacks
    without_locus.write_text(f"sequence_id\tcell_id\tproductive\tsequence_aa\nx\tc1\tT\t{NB1}\n")
    with pytest.raises(inputs.InputError, match="AIRR rearrangement file without the column\\(s\\) locus$"):
        parse_input(without_locus)


def test_airr_round_trip_through_batch(tmp_path, predictor):  # noqa: F811
    path = tmp_path / "rearrangements.tsv"
    write_airr(path, AIRR_ROWS)
    report = run_batch(path, tmp_path / "out", refine=False, workers=0, predictor=predictor, threads=1)
    summary = {row["name"]: row for row in read_csv(report.summary_path)}
    assert [(name, row["kind"], row["status"]) for name, row in summary.items()] == [
        ("cell1", "antibody", "ok"), ("cell2", "tcr", "ok"), ("vhh1", "nanobody", "ok"),
        ("vh_alone", "", "failed"), ("stop", "", "failed"),
    ]
    failures = {row["name"]: row["reason"] for row in read_csv(report.failures_path)}
    assert "not VHH-like" in failures["vh_alone"] and "light chain" in failures["vh_alone"]
    assert "not productive" in failures["stop"]
    assert (tmp_path / "out" / "cell1.pdb").is_file() and (tmp_path / "out" / "vhh1.pdb").is_file()


def test_parquet_summary_equals_csv(tmp_path, predictor, monkeypatch):  # noqa: F811
    import pyarrow.parquet as pq

    monkeypatch.setattr(batch, "PARQUET_ROWS", 3)  # 5 rows: row groups of 3 (record batches of 2 + 1) and 2
    monkeypatch.setattr(batch, "ARROW_ROWS", 2)
    path = tmp_path / "rearrangements.tsv"
    write_airr(path, AIRR_ROWS)
    report = run_batch(path, tmp_path / "out", refine=False, workers=0, predictor=predictor, threads=1)
    parquet = pq.ParquetFile(tmp_path / "out" / "summary.parquet")
    assert [parquet.metadata.row_group(i).num_rows for i in range(parquet.num_row_groups)] == [3, 2]
    table = parquet.read()
    assert table.column_names == batch.SUMMARY_COLUMNS
    assert str(table.schema.field("mean_error").type) == "double"
    rows = read_csv(report.summary_path)
    assert len(rows) == table.num_rows == 5
    for csv_row, parquet_row in zip(rows, table.to_pylist()):
        for column, value in parquet_row.items():
            if value is None:
                assert csv_row[column] == ""
            elif column in ("refined", "error_calibrated"):
                assert csv_row[column] == ("yes" if value else "no")
            elif isinstance(value, float):
                assert csv_row[column] == f"{value:.3f}"  # summary.csv writes 3 decimals of the same value
            else:
                assert csv_row[column] == str(value)


def test_large_runs_write_sharded_structure_folders(tmp_path, predictor, monkeypatch):  # noqa: F811
    monkeypatch.setattr(batch, "SHARD_THRESHOLD", 2)
    fasta = tmp_path / "three.fasta"
    fasta.write_text(f">nb1\n{NB1}\n>nb2\n{NB2}\n>ab1|H\n{AB1_H}\n>ab1|L\n{AB1_L}\n")
    report = run_batch(fasta, tmp_path / "out", refine=False, workers=0, predictor=predictor, threads=1)
    files = [row["file"] for row in read_csv(report.summary_path)]
    assert all(f.startswith("structures/") and f.count("/") == 2 and len(f.split("/")[1]) == 2 for f in files)
    assert all((tmp_path / "out" / f).is_file() for f in files)
    again = run_batch(fasta, tmp_path / "out", refine=False, workers=0, predictor=predictor, threads=1)
    assert (again.skipped, again.done) == (3, 0)


def test_full_temporary_disk_stops_the_run(tmp_path, monkeypatch):
    """The names seen spill to a temporary file (inputs.NameSet); when it cannot grow the run stops with one line."""
    opened = inputs.NameSet.__init__

    def small_disk(self):
        opened(self)
        self._db.execute("PRAGMA max_page_count = 2")  # the table's first page and no more: "database or disk is full"

    monkeypatch.setattr(inputs.NameSet, "__init__", small_disk)
    fasta = tmp_path / "many.fasta"
    fasta.write_text("".join(f">nb{i}\n{NB1}\n" for i in range(2000)))
    with pytest.raises(batch.BatchStopped, match=r"^reading .*many.fasta: OSError: .*temporary folder .*disk is full"):
        run_batch(fasta, tmp_path / "out", refine=False)


def test_fasta_is_streamed_and_pairs_within_the_window(tmp_path, monkeypatch):
    monkeypatch.setattr(inputs, "PAIRING_WINDOW", 3)
    fasta = tmp_path / "pairs.fasta"
    fasta.write_text(f">a|H\n{AB1_H}\n>b\n{NB1}\n>a|L\n{AB1_L}\n>c|H\n{AB2_H}\n>d\n{NB1}\n>e\n{NB1}\n>f\n{NB1}\n"
                     f">c|L\n{AB1_L}\n")
    stream = iter_records(fasta)
    first = next(stream)  # given out as soon as its partner is read, not at the end of the file
    assert (first.name, [slot for slot, _ in first.chains]) == ("a", ["heavy", "light"])
    rest = list(stream)
    assert [r.name for r in rest] == ["b", "c", "d", "e", "f", "c"]
    assert rest[1].chains == (("heavy", AB2_H),)  # its partner came more than 3 entries later
    assert rest[-1].error == "duplicate name"
