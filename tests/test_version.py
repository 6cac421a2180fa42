"""`immunofold --version`: the package version and the weights version that predictions report."""

import pytest

from immunofold import __version__
from immunofold.cli import main
from immunofold.ensemble import Ensemble


def test_version_names_the_package_and_the_weights_predictions_report(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.strip() == (f"immunofold {__version__}, weights {Ensemble.packaged().version}, "
                                               f"fast set {Ensemble.packaged(fast=True).version}")


def test_version_says_when_no_weights_are_found(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("IMMUNOFOLD_WEIGHTS", str(tmp_path))
    with pytest.raises(SystemExit):
        main(["--version"])
    assert capsys.readouterr().out.strip() == f"immunofold {__version__}, weights none found"
