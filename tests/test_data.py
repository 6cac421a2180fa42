"""SAbDab-like import: numbering from the structure's sequence, masks, skip report, template."""

import os
import shutil

import pytest
import torch

from conftest import NANOBODY_PDB
from immunofold.constants import is_framework
from immunofold.data.sabdab import build_examples, cached_examples, read_summary
from immunofold.data.template import build_template

HEADER = "pdb\tHchain\tLchain\tmodel\tantigen_chain\tdate\tresolution\tmethod\theavy_species\tlight_species\tkind\tsplit\tsource\theavy_seq\tlight_seq\n"


def make_folder(root, rows: list[str]) -> str:
    """A minimal SAbDab-like folder: sabdab/summary.tsv + structures/."""
    os.makedirs(os.path.join(root, "sabdab", "structures"))
    shutil.copy(NANOBODY_PDB, os.path.join(root, "sabdab", "structures", "7f5g.pdb"))
    with open(os.path.join(root, "sabdab", "structures", "9bad.pdb"), "w") as handle:
        handle.write("this is not a PDB file\n")
    with open(os.path.join(root, "sabdab", "summary.tsv"), "w") as handle:
        handle.write(HEADER + "".join(rows))
    return str(root)


NANOBODY_ROW = "7f5g\tB\tNA\t0\tNA\tNA\tNA\tNA\tNA\tNA\tnanobody\ttrain\ttest\tQV\tNA\n"
BROKEN_ROW = "9bad\tB\tNA\t0\tNA\tNA\tNA\tNA\tNA\tNA\tnanobody\ttrain\ttest\tQV\tNA\n"
MISSING_ROW = "9zzz\tH\tNA\t0\tNA\tNA\tNA\tNA\tNA\tNA\tnanobody\ttrain\ttest\tQV\tNA\n"


@pytest.fixture()
def folder(tmp_path):
    return make_folder(tmp_path / "data", [NANOBODY_ROW, BROKEN_ROW, MISSING_ROW])


def test_import_numbers_chains_and_reports_skipped_entries(folder):
    entries = read_summary(folder)
    assert [e.name for e in entries] == ["7f5g_B", "9bad_B", "9zzz_H"]
    examples, skipped = build_examples(entries, workers=1)
    assert len(examples) == 1 and len(skipped) == 2
    assert any("9bad_B" in reason for reason in skipped)
    assert any("9zzz_H" in reason and "missing" in reason for reason in skipped)
    example = examples[0]
    n = len(example["restype"])
    assert example["atom14"].shape == (n, 14, 3) and example["atom_mask"].shape == (n, 14)
    positions = example["imgt_position"]
    assert positions.min() >= 1 and positions.max() <= 128
    assert {23, 41, 104, 105, 117, 118} <= set(positions.tolist())  # Cys, Trp, CDR3 bounds, Trp/Phe 118
    assert example["atom_mask"][:, :4].all()  # complete backbone in this structure


def test_cache_is_written_once_with_a_skip_report(folder, tmp_path):
    cache = tmp_path / "cache"
    first = cached_examples(folder, "train", str(cache), workers=1)
    assert (cache / "examples-train.pt").exists()
    report = (cache / "skipped-train.txt").read_text()
    assert "2 of 3 train entries skipped" in report
    second = cached_examples(folder, "train", str(cache), workers=1)
    assert torch.equal(first[0]["atom14"], second[0]["atom14"])


def test_template_of_one_structure_is_that_structure(folder):
    examples, _ = build_examples(read_summary(folder)[:1], workers=1)
    example = examples[0]
    template = build_template(examples)  # [kinds, 2, 129, ranks, 3, 3]
    kind = int(example["kind"])
    atoms = template[kind, example["chain_slot"], example["imgt_position"], example["imgt_insertion"]]
    true = example["atom14"][:, :3]
    framework = is_framework(example["imgt_position"])
    # Same shape up to a translation (the template is centred).
    offset = (true[framework] - atoms[framework]).mean((0, 1))
    assert torch.allclose(atoms[framework] + offset, true[framework], atol=1e-3)
