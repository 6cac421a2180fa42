"""Fuzzing what users type and upload (hypothesis, bounded: well under 60 s): sequence checks, the Python API,
the FASTA/CSV/TSV parser and `immunofold batch`.

Property: a result, or an InputError (TypeError for a non-string in the API) whose message is one line naming
the record; never another exception, and never a file outside the output folder.
"""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import immunofold
from conftest import TRASTUZUMAB_HEAVY, TRASTUZUMAB_LIGHT
from immunofold.constants import RESTYPES
from immunofold.inputs import parse_input, resolve_or_reason
from immunofold.sequences import InputError, clean_sequence, number_receptor

FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
FEW = settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])

# Text a user might paste: real V domains cut, mutated and joined with junk, unicode, digits, stops, headers.
pieces = st.sampled_from([TRASTUZUMAB_HEAVY, TRASTUZUMAB_LIGHT, TRASTUZUMAB_HEAVY[:60], TRASTUZUMAB_LIGHT[30:], ">x|H\n",
                          "*", "1", " ", "\n", "-", ".", "X", "é", "\x00", "🧬", "\u202e", "," , "\t", '"'])
messy_sequences = st.lists(st.one_of(pieces, st.text(max_size=30)), max_size=6).map("".join)
names = st.one_of(st.text(max_size=40), st.sampled_from(["../../etc/passwd", "/abs/path", "con", "..", ".", "a/b", "=1+1"]))


def assert_one_line(error: Exception, record: str | None = None) -> None:
    message = str(error)
    assert message and "\n" not in message and "Traceback" not in message, repr(message)
    if record is not None:
        assert message.startswith(record), (record, message)


@FUZZ
@given(messy_sequences)
def test_clean_sequence_returns_amino_acids_or_a_one_line_error(sequence):
    try:
        cleaned = clean_sequence(sequence, "fuzz heavy chain")
    except InputError as error:
        assert_one_line(error, "fuzz heavy chain")
        return
    assert cleaned and set(cleaned) <= set(RESTYPES)


@FUZZ
@given(st.sampled_from(["antibody", "nanobody", "tcr", "scfv", ""]), messy_sequences, messy_sequences)
def test_numbering_a_receptor_returns_chains_or_a_one_line_error(kind, first, second):
    slots = {"antibody": ("heavy", "light"), "tcr": ("alpha", "beta")}.get(kind, ("heavy", "light"))
    try:
        chains = number_receptor(kind, dict(zip(slots, (first, second))), "fuzzed")
    except InputError as error:
        assert_one_line(error, "fuzzed")
        return
    assert chains and all(len(chain) >= 70 for chain in chains)


@FEW
@given(st.one_of(messy_sequences, st.integers(), st.binary(max_size=20), st.none(), st.lists(st.text(max_size=3), max_size=3)),
       st.sampled_from(["cpu", "tpu", "cuda:9", ""]), st.sampled_from(["imgt", "kabat", "martin", ""]))
def test_the_python_api_raises_only_input_or_type_errors(heavy, device, numbering):
    try:
        prediction = immunofold.predict(heavy=heavy, refine=False, device=device, numbering=numbering, name="api")
    except TypeError as error:
        assert not isinstance(heavy, str) and heavy is not None
        assert_one_line(error, "api")
    except InputError as error:
        assert_one_line(error, "api")
    else:
        assert len(prediction.error) >= 70


def fasta_files():
    record = st.tuples(names, st.sampled_from(["", "|H", "|L", "|A", "|B", "|heavy", "|zz"]), messy_sequences)
    return st.lists(record, max_size=6).map(lambda rows: "".join(f">{n}{s}\n{q}\n" for n, s, q in rows))


def table_files(delimiter: str):
    header = st.lists(st.sampled_from(["name", "heavy", "light", "alpha", "beta", "kind", "junk", ""]), min_size=1,
                      max_size=5)
    cell = st.one_of(messy_sequences, names, st.sampled_from(["antibody", "tcr", "auto", "nope"]))
    rows = st.lists(st.lists(cell, max_size=6), max_size=5)
    return st.tuples(header, rows).map(
        lambda t: "\n".join(delimiter.join(row) for row in [t[0], *t[1]]) + "\n"
    )


@FUZZ
@given(st.one_of(fasta_files().map(lambda text: (text, ".fasta")), table_files(",").map(lambda text: (text, ".csv")),
                 table_files("\t").map(lambda text: (text, ".tsv")), st.binary(max_size=200).map(lambda b: (b, ".fa"))))
def test_input_files_give_records_or_a_one_line_error(tmp_path_factory, content_and_suffix):
    content, suffix = content_and_suffix
    path = tmp_path_factory.mktemp("fuzz") / f"input{suffix}"
    path.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8", "surrogatepass"))
    try:
        records = parse_input(path)
    except InputError as error:
        assert_one_line(error)
        return
    for record in records:
        assert record.error is None or "\n" not in record.error
        result = resolve_or_reason(record, "auto")
        if isinstance(result, str):
            assert result and "\n" not in result


@pytest.fixture(scope="module")
def predictor():
    from immunofold.prediction import default_predictor

    return default_predictor("cpu")


@FEW
@given(st.lists(st.tuples(names, st.sampled_from([TRASTUZUMAB_HEAVY, "EVQL", TRASTUZUMAB_LIGHT + "*", "1" + TRASTUZUMAB_HEAVY])),
                min_size=1, max_size=4))
def test_batch_writes_only_inside_its_output_folder(tmp_path_factory, predictor, rows):
    from immunofold.batch import run_batch

    root = tmp_path_factory.mktemp("batch")
    fasta = root / "in.fasta"
    fasta.write_text("".join(f">{name.replace(chr(10), ' ')}\n{sequence}\n" for name, sequence in rows))
    outdir = root / "out"
    try:
        report = run_batch(fasta, outdir, refine=False, workers=0, predictor=predictor, threads=1)
    except InputError as error:
        assert_one_line(error)
        return
    assert report.ok_total + report.failed_total == report.total
    for folder, _, files in os.walk(root):
        for file_name in files:
            path = os.path.realpath(os.path.join(folder, file_name))
            assert path == os.path.realpath(fasta) or path.startswith(os.path.realpath(outdir) + os.sep), path
