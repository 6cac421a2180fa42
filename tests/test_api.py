"""The README's Python API as a user calls it: twice, from threads, with bad arguments."""

import subprocess
import sys
import threading

import pytest

import immunofold
import immunofold.prediction
from immunofold.sequences import InputError

from conftest import TRASTUZUMAB_HEAVY, TRASTUZUMAB_LIGHT


def test_predict_works_twice_in_a_fresh_process_and_after_importing_the_submodule():
    script = f"""
import immunofold
H, L = {TRASTUZUMAB_HEAVY!r}, {TRASTUZUMAB_LIGHT!r}
first = immunofold.predict(heavy=H, light=L, refine=False)
second = immunofold.predict(heavy=H, light=L, refine=False)
import immunofold.prediction
from immunofold.prediction import Predictor
third = immunofold.predict(heavy=H, light=L, refine=False)
assert first.to_pdb_string() == second.to_pdb_string() == third.to_pdb_string()
print("ok", len(first.error))
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    word, residues = result.stdout.split()
    assert word == "ok" and int(residues) > 200
    assert callable(immunofold.predict) and immunofold.predict is not immunofold.prediction


def test_threads_calling_predict_for_the_first_time_load_the_ensemble_once(monkeypatch):
    loads = []
    real_init = immunofold.prediction.Predictor.__init__

    def counting_init(self, *args, **kwargs):
        loads.append(threading.get_ident())
        real_init(self, *args, **kwargs)

    monkeypatch.setattr(immunofold.prediction, "_predictors", {})
    monkeypatch.setattr(immunofold.prediction.Predictor, "__init__", counting_init)
    results, errors = [], []

    def call():
        try:
            results.append(immunofold.predict(heavy=TRASTUZUMAB_HEAVY, light=TRASTUZUMAB_LIGHT, refine=False))
        except Exception as error:  # noqa: BLE001  (collected and asserted below)
            errors.append(error)

    threads = [threading.Thread(target=call) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors and len(results) == 3
    assert len(loads) == 1


@pytest.mark.parametrize("device", ["tpu", "cuda:7", ""])
def test_unknown_device_is_an_input_error(device):
    with pytest.raises(InputError) as excinfo:
        immunofold.predict(heavy=TRASTUZUMAB_HEAVY, light=TRASTUZUMAB_LIGHT, refine=False, device=device)
    assert "device" in str(excinfo.value) and "\n" not in str(excinfo.value)


def test_cuda_without_a_gpu_is_an_input_error(monkeypatch):
    monkeypatch.setattr(immunofold.prediction.torch.cuda, "is_available", lambda: False)
    with pytest.raises(InputError, match="no CUDA GPU"):
        immunofold.predict(heavy=TRASTUZUMAB_HEAVY, light=TRASTUZUMAB_LIGHT, refine=False, device="cuda")


@pytest.mark.parametrize("heavy", [12345, b"EVQLVESGG", ["EVQL"]])
def test_a_sequence_that_is_not_a_string_is_a_type_error(heavy):
    with pytest.raises(TypeError, match="heavy must be a sequence string"):
        immunofold.predict(heavy=heavy, refine=False)


def test_unknown_numbering_is_refused_before_the_model_runs(monkeypatch):
    monkeypatch.setattr(immunofold.prediction, "default_predictor", lambda *args: pytest.fail("model loaded"))
    with pytest.raises(InputError, match="unknown numbering scheme 'martin'"):
        immunofold.predict(heavy=TRASTUZUMAB_HEAVY, light=TRASTUZUMAB_LIGHT, numbering="martin")


def test_the_python_api_leaves_torchs_thread_count_alone(monkeypatch):
    import torch

    calls = []
    monkeypatch.setattr(torch, "set_num_threads", lambda n: calls.append(n))
    immunofold.predict(heavy=TRASTUZUMAB_HEAVY, light=TRASTUZUMAB_LIGHT, refine=False)
    assert calls == []


def test_the_top_level_predict_is_the_api_function_and_imports_torch_only_when_used():
    code = ("import sys, inspect, immunofold; assert 'torch' not in sys.modules; "
            "import immunofold.prediction as p; assert immunofold.predict is p.predict; "
            "from immunofold import predict; assert predict is p.predict; print(inspect.signature(immunofold.predict))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.startswith("(heavy: ")  # help(immunofold.predict) lists the parameters


def test_clean_geometry_with_refinement_is_refused_as_on_the_command_line():
    with pytest.raises(InputError, match="^tz: clean_geometry applies to unrefined models: add refine=False"):
        immunofold.predict(heavy=TRASTUZUMAB_HEAVY, light=TRASTUZUMAB_LIGHT, name="tz", clean_geometry=True)


def test_a_prediction_prints_as_one_short_line():
    prediction = immunofold.predict(heavy=TRASTUZUMAB_HEAVY, light=TRASTUZUMAB_LIGHT, name="tz", refine=False)
    text = repr(prediction)
    assert "\n" not in text and len(text) < 200
    assert text.startswith("Prediction(name='tz', kind='antibody', chains=H+L, residues=227, unrefined, mean_error=")


@pytest.mark.parametrize("kwargs, error, message", [
    ({"name": 5}, TypeError, "name must be a string, not int"),
    ({"refine": "no"}, TypeError, "input: refine must be True or False, not 'no'"),
    ({"clean_geometry": None, "refine": False}, TypeError, "input: clean_geometry must be True or False, not None"),
])
def test_options_of_the_wrong_type_are_refused_in_one_line(kwargs, error, message):
    with pytest.raises(error, match=f"^{message}$"):
        immunofold.predict(heavy=TRASTUZUMAB_HEAVY, **kwargs)


def test_no_chain_at_all_says_which_to_give():
    with pytest.raises(InputError, match="^input: no chain given: heavy= \\(and light=\\) for an antibody or nanobody"):
        immunofold.predict()


def test_save_creates_its_folder_and_refuses_a_format_that_contradicts_the_name(tmp_path):
    prediction = immunofold.predict(heavy=TRASTUZUMAB_HEAVY, light=TRASTUZUMAB_LIGHT, refine=False)
    prediction.save(tmp_path / "new" / "model.pdb")
    assert (tmp_path / "new" / "model.pdb").read_text().startswith("REMARK")
    with pytest.raises(ValueError, match="model.pdb ends in .pdb but fmt is 'cif'; name it .*model.cif"):
        prediction.save(tmp_path / "model.pdb", fmt="cif")
    with pytest.raises(ValueError, match="^fmt='xyz': give 'pdb' or 'cif'$"):
        prediction.save_ensemble(tmp_path / "members", fmt="xyz")
    assert not (tmp_path / "members").exists() and not (tmp_path / "model.pdb").exists()
    prediction.save(tmp_path / "new" / "model.pdb")
    with pytest.raises(NotADirectoryError, match="model.pdb is a file; save_ensemble writes one file per member into a folder"):
        prediction.save_ensemble(tmp_path / "new" / "model.pdb")
    with pytest.raises(ValueError, match=r"atom14 must be \[227, 14, 3\] coordinates"):
        prediction.structure_of(0)
