"""Batch input parsing and record resolution: every format, and >= 100 generated bad inputs that
must each give a one-line reason (never an exception escaping)."""

import random

import pytest

from immunofold.inputs import (
    Record,
    assign_file_stems,
    parse_input,
    resolve_or_reason,
    resolve_record,
    resolve_records,
    safe_name,
)
from immunofold.sequences import InputError

# Real val-split sequences (SAbDab / STCRDab summary.tsv).
VH = "MQLVQSGPEVKKPGTSVKVSCKASGFTFTSSAVQWVRQARGQRLEWIGWIVVGSGNTNYAQKFQERVTITRDMSTSTAYMELSSLRSEDTAVYYCAAPHCSSTICYDGFDIWGQGTMVTVSS"  # 7b0b
VL = "EIVLTQSPGTLSLSPGERATLSCRASQSVSSSYLAWYQQKPGQAPRLLIYGASSRATGIPDRFSGSGSGTDFTLTISRVEPEDFAVYYCQQYGSSPWTFGQGTKVEIK"  # 7b0b
VL_LAMBDA = "QSALTQPASVSGSPGQSITISCTGTSSDVGGYNYVSWYQQHPGKAPKLMIYDVSNRPSGVSNRFSGSKSGNTASLTISGLQAEDEADYYCSSYTSSSTRVFGGGTKLTVL"
VHH = "QVQLVESGGGVVQAGGSLRLSCAASGSIFSSNAMAWYRQAPGNVRRLVAAISSRGDNTNYEDSVRGRFTISRDNAENTVSLQMNSLKPEDTAIYYCNVGSFYRGNYYGGSSWGQGTQVTVSS"  # 7b5g
ALPHA = "QSVSQHNHHVILSEAASLELGCNYSYGGTVNLFWYVQYPGQHLQLLLKYFSGDPLVKGIKGFEAEFIKSKFSFNLRKPSVQWSDTAEYFCAVNARRNTPLVFGKGTRLSVIA"  # 6vm7
BETA = "GITQSPKYLFRKEGQNVTLSCEQNLNHDAMYWYRQDPGQGLRLIYYSQIVNDFQKGDIAEGYSVSREKKESFPLTVTSAQKNPTAFYLCASSITLSSYNEQFFGPGTRLTVL"  # 6vm7
CH1 = "ASTKGPSVFPLAPSSKSTSGGTAALGCLVKDYFPEPVTVSWNSGALTSGVHTFPAVLQSSGLYSLSSVVTVPSSSLGTQTYICNVNHKPSNTKVDKKVEPKSC"
CKAPPA = "RTVAAPSVFIFPPSDEQLKSGTASVVCLLNNFYPREAKVQWKVDNALQSGNSQESVTEQDSKDSTYSLSSTLTLSKADYEKHKVYACEVTHQGLSSPVTKSFNRGEC"
SIGNAL = "MEFGLSWVFLVALLRGVQC"
LINKER = "GGGGSGGGGSGGGGS"
HIS_TAG = "HHHHHH"
LYSOZYME = "KVFGRCELAAAMKRHGLDNYRGYSLGNWVCAAKFESNFNTQATNRNTDGSTDYGILQINSRWWCNDGRTPGSRNLCNIPCSALLSSDITASVNCAKKIVSDGNGMNAWVAWRNRCKGTDVQAWIRGCRL"
UBIQUITIN = "MQIFVKTLTGKTITLEVEPSDTIENVKAKIQDKEGIPPDQQRLIFAGKQLEDGRTLSDYNIQKESTLHLVLRLRGG"
GFP = "MSKGEELFTGVVPILVELDGDVNGHKFSVSGEGEGDATYGKLTLKFICTTGKLPVPWPTLVTTFSYGVQCFSRYPDHMKQHDFFKSAMPEGYVQERTIFFKDDGNYKTRAEVKFEGDTLVNRIELKGIDFKEDGNILGHKLEYNYNSHNVYIMADKQKNGIKVNFKIRHNIEDGSVQLADHYQQNTPIGDGPVLLPDNHYLSTQSALSKDPNEKRDHMVLLEFVTAAGITHGMDELYK"


def write(tmp_path, text, suffix):
    path = tmp_path / f"input{suffix}"
    path.write_text(text)
    return path


def resolve_all(path, kind="auto"):
    """{name: Resolved | reason} for every record of a file, or the file-level reason."""
    try:
        records = parse_input(path)
    except InputError as error:
        return {"<file>": str(error)}
    out = {}
    for record in records:
        out.setdefault(record.name, []).append(resolve_or_reason(record, kind))
    return out


# --------------------------------------------------------------------------------------------
# formats
# --------------------------------------------------------------------------------------------
def test_fasta_pairs_colon_and_single(tmp_path):
    text = (
        f">ab1|H some description\n{VH[:60]}\n{VH[60:]}\n>tcr1|A\n{ALPHA}\n>ab1|L\n{VL}\n>tcr1|B\n{BETA}\n"
        f";a comment\n\n>ab2\n{VH}:{VL}\n>nb1\n{VHH.lower()}*\n>tcr2\n{ALPHA}:{BETA}\n>ab3|heavy\n{VH}\n>ab3|light\n{VL_LAMBDA}\n"
    )
    records = parse_input(write(tmp_path, text, ".fasta"))
    assert [r.name for r in records] == ["ab1", "tcr1", "ab2", "nb1", "tcr2", "ab3"]
    assert records[0].chains == (("heavy", VH), ("light", VL))
    assert records[2].chains == ((None, VH), (None, VL))
    kinds = [resolve_record(r).kind for r in records]
    assert kinds == ["antibody", "tcr", "antibody", "nanobody", "tcr", "antibody"]
    ab3 = resolve_record(records[5])
    assert [c.chain_class for c in ab3.chains] == ["heavy", "lambda"]


def test_fasta_header_forms():
    from immunofold.inputs import _split_header

    assert _split_header("trastuzumab|H heavy chain") == ("trastuzumab", "heavy")
    assert _split_header("my antibody|light") == ("my antibody", "light")
    assert _split_header("sp|P01857|IGHG1_HUMAN Immunoglobulin heavy") == ("sp|P01857|IGHG1_HUMAN", None)
    assert _split_header(" nb1  camelid VHH ") == ("nb1", None)
    assert _split_header("tcr|A") == ("tcr", "alpha") and _split_header("tcr|b") == ("tcr", "beta")


def test_format_detected_from_content(tmp_path):
    assert [r.name for r in parse_input(write(tmp_path, f">x\n{VHH}\n", ".txt"))] == ["x"]
    assert [r.name for r in parse_input(write(tmp_path, f"name\theavy\nx\t{VHH}\n", ".dat"))] == ["x"]
    assert [r.name for r in parse_input(write(tmp_path, f"name,heavy\nx,{VHH}\n", ".dat"))] == ["x"]


@pytest.mark.parametrize("sep,suffix", [(",", ".csv"), ("\t", ".tsv")])
def test_table_formats(tmp_path, sep, suffix):
    rows = [
        ["Name", "Heavy", "Light", "alpha", "beta"],
        ["ab1", VH, VL, "", ""],
        ["nb1", VHH, "", "", ""],
        ["tcr1", "", "", ALPHA, BETA],
    ]
    text = "\ufeff" + "\n".join(sep.join(row) for row in rows) + "\n"
    records = parse_input(write(tmp_path, text, suffix))
    assert [r.name for r in records] == ["ab1", "nb1", "tcr1"]
    assert [resolve_record(r).kind for r in records] == ["antibody", "nanobody", "tcr"]


def test_gzip_compressed_inputs_are_read_and_a_damaged_one_is_one_line(tmp_path):
    import gzip

    text = f"sequence_id\tlocus\tproductive\tsequence_aa\tcell_id\nh1\tIGH\tT\t{VH}\tc1\nl1\tIGK\tT\t{VL}\tc1\n"
    path = tmp_path / "rearrangements.tsv.gz"
    path.write_bytes(gzip.compress(text.encode()))
    (record,) = parse_input(path)
    assert resolve_record(record).kind == "antibody"
    short = gzip.compress(f">nb1\n{VHH}\n".encode())  # cut inside the first 4 KB: refused before any record
    (tmp_path / "short.fa.gz").write_bytes(short[:-20])
    assert "cannot read input file (Compressed file ended" in resolve_all(tmp_path / "short.fa.gz")["<file>"]
    long = gzip.compress("".join(f">nb{i}\n{VHH}\n" for i in range(100)).encode())  # 13 KB: cut after the start
    (tmp_path / "long.fa.gz").write_bytes(long[:-20])
    with pytest.raises(InputError, match=r"compressed input is damaged after \d+ records"):
        parse_input(tmp_path / "long.fa.gz")
    import bz2

    (tmp_path / "in.fa.bz2").write_bytes(bz2.compress(f">nb1\n{VHH}\n".encode()))
    assert resolve_all(tmp_path / "in.fa.bz2")["<file>"].endswith("is a bzip2 archive: only gzip is read, unpack it first")


def test_a_lone_heavy_chain_without_vhh_hallmarks_is_a_nanobody_with_a_note(tmp_path):
    out = resolve_all(write(tmp_path, f">vh\n{VH}\n>vhh\n{VHH}\n", ".fa"))
    vh, vhh = out["vh"][0], out["vhh"][0]
    assert vh.kind == vhh.kind == "nanobody"
    notes = [note for chain in vh.chains for note in chain.notes]
    assert len(notes) == 1 and "of 4 VHH hallmarks" in notes[0] and "vh|L" in notes[0]
    assert not [note for chain in vhh.chains for note in chain.notes]
    assert not resolve_all(write(tmp_path, f">vh\n{VH}\n", ".fasta"), kind="nanobody")["vh"][0].chains[0].notes
    (table_note,) = resolve_all(write(tmp_path, f"name,heavy,light\nvh,{VH},\n", ".csv"))["vh"][0].chains[0].notes
    assert table_note.endswith("needs its light chain (a light sequence in its row)")  # not FASTA's vh|L


def test_what_cleaning_dropped_from_a_batch_record_is_a_note_of_its_chain(tmp_path):
    """A trailing '*' and alignment gaps were dropped from batch records without a word."""
    gapped = VHH[:30] + "." + VHH[30:] + "*"
    out = resolve_all(write(tmp_path, f">nb\n{gapped}\n>clean\n{VHH}\n", ".fa"))
    notes = out["nb"][0].chains[0].notes
    assert notes == ("nb: dropped the trailing stop codon '*'", "nb: dropped 1 alignment gap character ('-' or '.')")
    assert out["nb"][0].chains[0].sequence == out["clean"][0].chains[0].sequence == VHH
    assert not out["clean"][0].chains[0].notes


def test_kind_column_and_explicit_kind(tmp_path):
    path = write(tmp_path, f"name,heavy,kind\nnb1,{VHH},nanobody\nnb2,{VHH},tcr\n", ".csv")
    out = resolve_all(path)
    assert out["nb1"][0].kind == "nanobody"
    assert "tcr needs alpha+beta" in out["nb2"][0]
    assert isinstance(resolve_all(path, kind="antibody")["nb1"][0], type(out["nb1"][0]))  # per-row kind wins


def test_scfv_fab_full_length_and_tags_are_trimmed_to_v_domains():
    scfv = Record(0, "scfv", ((None, SIGNAL + VH + LINKER + VL + HIS_TAG),))
    resolved = resolve_record(scfv)
    assert resolved.kind == "antibody"
    heavy, light = resolved.chains
    assert VH[1:] in heavy.sequence and len(heavy) <= len(VH) + 1  # numbering may claim one signal residue
    assert light.sequence == VL
    fab = Record(1, "fab", (("heavy", VH + CH1), ("light", VL + CKAPPA)))
    resolved = resolve_record(fab)
    assert [c.sequence for c in resolved.chains] == [VH, VL]
    assert any("removed" in note for note in resolved.notes)
    reversed_scfv = Record(2, "vl-vh", ((None, VL + LINKER + VH),))
    assert [c.chain_class for c in resolve_record(reversed_scfv).chains] == ["heavy", "kappa"]
    messy = Record(3, "messy", ((None, "  " + VHH[:50].lower() + "\n  " + VHH[50:] + " *"),))
    assert resolve_record(messy).chains[0].sequence == VHH


def test_swapped_labels_are_used_by_chain_type():
    record = Record(0, "swapped", (("heavy", VL), ("light", VH)))
    resolved = resolve_record(record)
    assert [c.sequence for c in resolved.chains] == [VH, VL]
    assert any("given as heavy is a kappa chain" in note for note in resolved.notes)


def test_safe_names():
    assert safe_name("../../etc/passwd") == "etc_passwd"
    assert "/" not in safe_name("a/b\\c") and "\\" not in safe_name("a/b\\c")
    assert safe_name("...") == "record" and safe_name("CON") == "record_CON"
    stems = assign_file_stems(["ab1", "a b", "a_b", "AB1", "../x", "x" * 500, ""])
    assert stems[0] == "ab1"
    assert len({s.lower() for s in stems}) == len(stems)
    assert all("/" not in s and not s.startswith(".") and len(s) <= 110 for s in stems)


# --------------------------------------------------------------------------------------------
# >= 100 generated bad inputs
# --------------------------------------------------------------------------------------------
def _bad_cases():
    """(label, file text, suffix, kind, names that must fail or None for all)."""
    rng = random.Random(1234)
    cases = []
    # invalid letters at random places (40)
    for i in range(40):
        seq = list([VH, VL, VHH, ALPHA][i % 4])
        for _ in range(1 + i % 3):
            seq.insert(rng.randrange(len(seq) + 1), rng.choice("XBJOUZ#@!%é?"))
        cases.append((f"letters{i}", f">bad{i}\n{''.join(seq)}\n", ".fasta", "auto", None))
    # truncations far below a V domain (15)
    for i, k in enumerate([0, 1, 5, 10, 20, 30, 40, 50, 60, 69, 3, 15, 25, 45, 65]):
        source = [VH, VL, VHH][i % 3]
        start = rng.randrange(len(source) - k + 1)
        cases.append((f"trunc{i}", f"name,heavy\nt{i},{source[start:start + k] or ' '}\n", ".csv", "auto", None))
    # empty records (6)
    for i, body in enumerate(["", "   ", "***", "--..", "\n\n", "12345"]):
        cases.append((f"empty{i}", f">e{i}\n{body}\n>ok\n{VHH}\n", ".fasta", "auto", [f"e{i}"]))
    # non-immune proteins (5 real + 15 random)
    for i, protein in enumerate([LYSOZYME, UBIQUITIN, GFP, LYSOZYME + GFP, CH1 + CKAPPA]):
        cases.append((f"protein{i}", f">p{i}\n{protein}\n", ".fasta", "auto", None))
    for i in range(15):
        seq = "".join(rng.choice("ACDEFGHIKLMNPQRSTVWY") for _ in range(rng.randrange(80, 400)))
        cases.append((f"random{i}", f">r{i}\n{seq}\n", ".fasta", "auto", None))
    # lone or mismatched chains (14)
    lone = [
        (f">l\n{VL}\n", "auto"), (f">l\n{VL_LAMBDA}\n", "auto"), (f">a\n{ALPHA}\n", "auto"), (f">b\n{BETA}\n", "auto"),
        (f">h\n{VH}\n", "antibody"), (f">h\n{VHH}\n", "tcr"), (f">p\n{VH}:{VL}\n", "nanobody"),
        (f">t\n{ALPHA}:{BETA}\n", "antibody"), (f">l\n{VL}\n", "antibody"), (f">hh\n{VH}:{VHH}\n", "auto"),
        (f">ll\n{VL}:{VL_LAMBDA}\n", "auto"), (f">mix\n{VH}:{BETA}\n", "auto"), (f">three\n{VH}:{VL}:{VHH}\n", "auto"),
        (f">aa\n{ALPHA}:{ALPHA}\n", "auto"),
    ]
    for i, (text, kind) in enumerate(lone):
        cases.append((f"lone{i}", text, ".fasta", kind, None))
    # 10,000-residue sequences (3)
    cases.append(("long0", f">long\n{(VH * 100)[:10000]}\n", ".fasta", "auto", None))
    cases.append(("long1", f">long\n{''.join(rng.choice('ACDEFGHIKLMNPQRSTVWY') for _ in range(10000))}\n", ".fasta", "auto", None))
    cases.append(("long2", f"name,heavy,light\nlong,{VH},{'A' * 10000}\n", ".csv", "auto", None))
    # duplicates (4)
    cases.append(("dup0", f">d\n{VHH}\n>d\n{VHH}\n", ".fasta", "auto", ["d#2"]))
    cases.append(("dup1", f">d|H\n{VH}\n>d|L\n{VL}\n>d|H\n{VH}\n", ".fasta", "auto", ["d#2"]))
    cases.append(("dup2", f"name,heavy\nd,{VHH}\nd,{VHH}\n", ".csv", "auto", ["d#2"]))
    cases.append(("dup3", f"name\theavy\nd\t{VHH}\nd\t{VHH}\n", ".tsv", "auto", ["d#2"]))
    # garbage lines, broken headers, binary (8)
    cases.append(("garbage0", f"{VHH}\n>ok\n{VHH}\n", ".fasta", "auto", ["line 1"]))
    cases.append(("garbage1", f">\n{VHH}\n", ".fasta", "auto", None))
    cases.append(("garbage2", f">x\n{VHH[:60]}\nthis is not a sequence!\n{VHH[60:]}\n", ".fasta", "auto", None))
    cases.append(("garbage3", "\x00\x01\x02binary\x00junk", ".fasta", "auto", None))
    cases.append(("garbage4", "", ".fasta", "auto", None))
    cases.append(("garbage5", "just some words\n", ".dat", "auto", None))
    cases.append(("garbage6", f">x|Q\n{VH}\n>x|L\n{VL}\n", ".fasta", "auto", ["x"]))
    cases.append(("garbage7", f">x\n{VHH}\n>x\n>x\n", ".fasta", "auto", ["x#2", "x#3"]))
    # wrong columns / rows (10)
    cases.append(("cols0", f"id_code,heavy\nx,{VHH}\n", ".csv", "auto", None))
    cases.append(("cols1", f"name,seq\nx,{VHH}\n", ".csv", "auto", None))
    cases.append(("cols2", f"name,heavy\nx,{VHH},extra\n", ".csv", "auto", None))
    cases.append(("cols3", "name,heavy,light\nx\n", ".csv", "auto", None))
    cases.append(("cols4", f"name,heavy,kind\nx,{VHH},camel\n", ".csv", "auto", None))
    cases.append(("cols5", f"name,heavy,h\nx,{VHH},{VHH}\n", ".csv", "auto", None))
    cases.append(("cols6", f"name,heavy\n,{VHH}\n", ".csv", "auto", None))
    cases.append(("cols7", "name,heavy,light\n", ".csv", "auto", None))
    cases.append(("cols8", f"name,alpha\nx,{VL}\n", ".csv", "auto", None))
    cases.append(("cols9", f"name;heavy\nx;{VHH}\n", ".csv", "auto", None))
    return cases


BAD_CASES = _bad_cases()


def test_at_least_100_bad_cases():
    assert len(BAD_CASES) >= 100


@pytest.mark.parametrize("label,text,suffix,kind,must_fail", BAD_CASES, ids=[c[0] for c in BAD_CASES])
def test_bad_input_gives_one_line_reason(tmp_path, label, text, suffix, kind, must_fail):
    path = tmp_path / f"input{suffix}"
    path.write_text(text, encoding="utf-8", errors="surrogateescape")
    try:
        records = parse_input(path)
    except InputError as error:  # the whole file is unusable: one line that names it
        message = str(error)
        assert message and "\n" not in message and str(path) in message
        return
    seen: dict[str, int] = {}
    failed = []
    for record in records:
        seen[record.name] = seen.get(record.name, 0) + 1
        key = record.name if seen[record.name] == 1 else f"{record.name}#{seen[record.name]}"
        result = resolve_or_reason(record, kind)
        if isinstance(result, str):
            assert result.strip() and "\n" not in result and len(result) <= 300, result
            failed.append(key)
    if must_fail is None:
        assert failed and len(failed) == len(records), (label, failed)
    else:
        assert sorted(failed) == sorted(must_fail), (label, failed)


def test_specific_reasons(tmp_path):
    out = resolve_all(write(tmp_path, f">d\n{VHH}\n>d\n{VHH}\n>l\n{VL}\n>p\n{LYSOZYME}\n>x\n{VH}X\n>long\n{'A' * 10000}\n", ".fa"))
    assert out["d"][1] == "duplicate name"
    assert "lone light chain" in out["l"][0]
    assert "no antibody or TCR variable domain" in out["p"][0]
    assert "invalid letters 'X'" in out["x"][0]
    assert "10000 residues is longer than" in out["long"][0]


def test_a_repeated_pair_is_one_failure_and_the_first_pair_keeps_its_chains(tmp_path):
    path = write(tmp_path, f">x|H\n{VH}\n>x|L\n{VL}\n>y\n{VHH}\n>x|H\n{VH}\n>x|L\n{VL}\n>x|H\n{VH}\n", ".fa")
    records = parse_input(path)
    assert [(r.name, r.error, [slot for slot, _ in r.chains]) for r in records] == [
        ("x", None, ["heavy", "light"]), ("y", None, [None]),
        ("x", "duplicate name", ["heavy", "light"]), ("x", "duplicate name", ["heavy"])]


RECORDS_TO_RESOLVE = [
    Record(0, "ab", (("heavy", VH), ("light", VL))),
    Record(1, "nb", ((None, VHH),)),
    Record(2, "tcr", (("alpha", ALPHA), ("beta", BETA))),
    Record(3, "digits", ((None, "EVQL1VES"),)),
    Record(4, "lyso", ((None, LYSOZYME),)),
    Record(5, "unreadable", (), error="line 9: no sequence after the header"),
    Record(6, "scfv", ((None, VH + LINKER + VL_LAMBDA),)),
    Record(7, "ab again", (("heavy", VH.lower()), ("light", VL + "*"))),
]


def test_records_resolved_together_equal_records_resolved_alone(monkeypatch):
    """One anarcism call numbers every readable chain of the records; each record's outcome (chains, kind, notes or
    its one-line reason) is what resolving it alone gives, and the seconds cover every record."""
    import anarcism

    alone = [resolve_or_reason(record) for record in RECORDS_TO_RESOLVE]
    calls = {"together": 0, "alone": 0}
    number_sequences, number_sequence = anarcism.number_sequences, anarcism.number_sequence
    monkeypatch.setattr(anarcism, "number_sequences",
                        lambda inputs, **kw: calls.__setitem__("together", calls["together"] + 1) or number_sequences(inputs, **kw))
    monkeypatch.setattr(anarcism, "number_sequence",
                        lambda *a, **kw: calls.__setitem__("alone", calls["alone"] + 1) or number_sequence(*a, **kw))
    together = resolve_records(RECORDS_TO_RESOLVE)
    assert calls == {"together": 1, "alone": 0}
    assert [result for result, _ in together] == alone
    assert [type(r).__name__ for r in alone] == ["Resolved", "Resolved", "Resolved", "str", "str", "str", "Resolved", "Resolved"]
    assert all(seconds > 0 for _, seconds in together)


@pytest.mark.parametrize("failure", ["refused", "crashed"])
def test_records_are_numbered_one_by_one_when_the_joint_call_fails(monkeypatch, failure):
    import anarcism

    def fail(inputs, **kwargs):
        raise anarcism.AnarcismError("refused") if failure == "refused" else RuntimeError("library bug")

    alone = [resolve_or_reason(record) for record in RECORDS_TO_RESOLVE]
    monkeypatch.setattr(anarcism, "number_sequences", fail)
    assert [result for result, _ in resolve_records(RECORDS_TO_RESOLVE)] == alone
