"""The error calibrator: its model (positive, monotone in spread and head), its fit, its file and its use."""

import dataclasses
import json

import numpy as np
import pytest

from conftest import TRASTUZUMAB_HEAVY, TRASTUZUMAB_LIGHT
from immunofold.calibration import GROUPS, REFERENCE_CDR3_LENGTH, Calibrator, design, fit, packaged_calibrator
from immunofold.prediction import CALIBRATED_ERROR_REMARK, Predictor

# A nanobody-like receptor: IMGT 1-128 with a 15-residue CDR3 (105-117 plus 111A, 112A).
POSITIONS = np.array([*range(1, 112), 111, 112, *range(112, 129)])
SLOTS = np.zeros(len(POSITIONS), dtype=int)


def calibrator(spread_power=0.8, head_power=0.5, depth_slope=0.2, position_offsets=None) -> Calibrator:
    offsets = {g: (0.6 if g.endswith("cdr3") else 0.0) for g in GROUPS}
    return Calibrator("v-test", offsets, spread_power, head_power, {"antibody": 0.02, "nanobody": 0.05, "tcr": 0.0},
                      depth_slope, {"data": "synthetic"}, position_offsets or {})


def test_error_is_positive_and_rises_with_spread_and_head():
    model, rng = calibrator(), np.random.default_rng(0)
    spread, head = rng.uniform(0, 3, len(POSITIONS)), rng.uniform(0, 3, len(POSITIONS))
    error = model.apply("nanobody", SLOTS, POSITIONS, spread, head)
    assert error.shape == spread.shape and (error > 0).all()
    assert (model.apply("nanobody", SLOTS, POSITIONS, spread + 0.5, head) > error).all()
    assert (model.apply("nanobody", SLOTS, POSITIONS, spread, head + 0.5) > error).all()
    cdr3 = (POSITIONS >= 105) & (POSITIONS <= 117)
    flat = model.apply("nanobody", SLOTS, POSITIONS, np.ones(len(POSITIONS)), np.ones(len(POSITIONS)))
    assert flat[cdr3].min() > flat[~cdr3].max()  # same estimates: the CDR3 offset puts its residues above


def test_json_round_trips():
    model = calibrator()
    again = Calibrator.from_json(model.to_json())
    assert again == model
    spread = np.linspace(0.1, 4, len(POSITIONS))
    np.testing.assert_array_equal(again.apply("nanobody", SLOTS, POSITIONS, spread, spread),
                                  model.apply("nanobody", SLOTS, POSITIONS, spread, spread))


def test_a_position_offset_scales_its_position_only():
    spread = np.linspace(0.1, 4, len(POSITIONS))
    plain = calibrator().apply("nanobody", SLOTS, POSITIONS, spread, spread)
    shifted = calibrator(position_offsets={"nanobody H 84": 0.5, "antibody H 40": 1.0}).apply(
        "nanobody", SLOTS, POSITIONS, spread, spread)
    at_84 = POSITIONS == 84
    np.testing.assert_allclose(shifted[at_84], plain[at_84] * np.exp(0.5))
    np.testing.assert_array_equal(shifted[~at_84], plain[~at_84])  # antibody H 40 is another kind's position


def test_a_file_without_position_offsets_loads_with_the_old_estimates():
    model = calibrator()
    fields = json.loads(model.to_json())
    del fields["position_offsets"]  # as files written before position offsets existed
    old = Calibrator.from_json(json.dumps(fields))
    assert old.position_offsets == {}
    rng = np.random.default_rng(2)
    spread, head = rng.uniform(0, 3, len(POSITIONS)), rng.uniform(0, 3, len(POSITIONS))
    before = np.exp(model._parameters() @ design("nanobody", SLOTS, POSITIONS, spread, head).T)  # the model without positions
    np.testing.assert_allclose(old.apply("nanobody", SLOTS, POSITIONS, spread, head), before, rtol=1e-12)


def synthetic_receptors(model: Calibrator, n: int, seed: int = 1) -> list[dict]:
    """Receptors whose CA deviations are 3D Gaussian displacements with mean square error² of `model`."""
    rng, receptors = np.random.default_rng(seed), []
    for _ in range(n):
        spread, head = rng.lognormal(0, 0.7, len(POSITIONS)), rng.lognormal(0, 0.5, len(POSITIONS))
        error = model.apply("nanobody", SLOTS, POSITIONS, spread, head)
        deviation = np.linalg.norm(rng.normal(size=(len(POSITIONS), 3)) * error[:, None] / np.sqrt(3), axis=1)
        deviation[::17] = np.nan  # residues missing from the structure are left out of the fit
        receptors.append({"kind": "nanobody", "slot": SLOTS, "position": POSITIONS, "spread": spread,
                          "head_error": head, "deviation": deviation})
    return receptors


def test_fit_recovers_the_parameters_that_made_the_data():
    truth = calibrator()
    fitted = fit(synthetic_receptors(truth, 150), "v-test", {"data": "synthetic"})
    assert fitted.fitted_on["converged"] and fitted.fitted_on["receptors"] == 150
    assert fitted.spread_power == pytest.approx(truth.spread_power, abs=0.05)
    assert fitted.head_power == pytest.approx(truth.head_power, abs=0.05)
    assert fitted.depth_slope == pytest.approx(truth.depth_slope, abs=0.1)
    assert fitted.offsets["nanobody H fr"] == pytest.approx(truth.offsets["nanobody H fr"], abs=0.15)
    # every synthetic CDR3 has 15 residues, so only the CDR3 offset plus the length term at 15 is identifiable
    length_term = 15 - REFERENCE_CDR3_LENGTH
    fitted_cdr3, true_cdr3 = (m.offsets["nanobody H cdr3"] + m.cdr3_length_slope["nanobody"] * length_term
                              for m in (fitted, truth))
    assert fitted_cdr3 == pytest.approx(true_cdr3, abs=0.15)
    assert all(np.isfinite(v) for v in fitted.offsets.values())  # groups without data get a region mean


def test_fit_recovers_a_planted_position_offset_and_leaves_the_others_near_zero():
    truth = calibrator(position_offsets={"nanobody H 84": 0.7})
    fitted = fit(synthetic_receptors(truth, 150), "v-test", {}, position_prior=0.3)
    assert fitted.position_offsets["nanobody H 84"] == pytest.approx(0.7, abs=0.12)
    others = [v for k, v in fitted.position_offsets.items() if k != "nanobody H 84"]
    seen = np.unique(np.delete(POSITIONS, np.s_[::17]))  # IMGT numbers with a known deviation (synthetic_receptors)
    assert len(others) == len(seen) - 1 and max(abs(v) for v in others) < 0.2
    without = fit(synthetic_receptors(truth, 150), "v-test", {}, position_prior=0.0)
    assert without.position_offsets == {}


def test_fit_never_lets_the_error_fall_as_spread_rises():
    receptors = synthetic_receptors(calibrator(), 40)
    for r in receptors:  # deviations that shrink as the spread grows
        r["deviation"] = r["deviation"] / r["spread"] ** 2
    fitted = fit(receptors, "v-test", {})
    assert fitted.spread_power == 0.0 and fitted.head_power >= 0.0


def test_shipped_calibrator_is_for_the_shipped_weights_only():
    predictor = Predictor()
    assert predictor.calibrator is not None, "weights/calibration.json missing or fitted for other weights"
    assert predictor.calibrator.weights_version == predictor.ensemble.version
    assert packaged_calibrator("v0.0+0000000000") is None


def test_prediction_error_is_the_calibrated_estimate():
    predictor = Predictor()
    predictor.calibrator = dataclasses.replace(calibrator(), weights_version=predictor.ensemble.version)
    chains = {"heavy": TRASTUZUMAB_HEAVY, "light": TRASTUZUMAB_LIGHT}
    prediction = predictor.predict("antibody", chains, refine=False)
    slot = np.repeat([0, 1], [len(c) for c in prediction.chains])
    position = np.array([n for c in prediction.chains for n, _ in c.positions])
    expected = predictor.calibrator.apply("antibody", slot, position, prediction.spread, prediction.head_error)
    np.testing.assert_allclose(prediction.error, expected, rtol=1e-5)
    raw = np.sqrt(prediction.spread**2 + prediction.head_error**2)
    assert not np.allclose(prediction.error, raw, rtol=0.05)  # spread and head kept as they are, error changed
    assert prediction.error_calibrated and CALIBRATED_ERROR_REMARK in prediction.remarks()

    predictor.calibrator = None  # weights without a calibrator: the raw estimate, said so in the file
    uncalibrated = predictor.predict("antibody", chains, refine=False)
    np.testing.assert_allclose(uncalibrated.error, raw, rtol=1e-5)
    assert not uncalibrated.error_calibrated and CALIBRATED_ERROR_REMARK not in uncalibrated.remarks()
