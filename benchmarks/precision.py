"""bf16 and int8 on the CPU for the model pass (issue 24, item 3): CPU ms per Fv and val accuracy against fp32.

    python benchmarks/precision.py                 # writes benchmarks/results/precision.md and precision.json
    python benchmarks/precision.py --no-accuracy   # speed only

Variants of every ensemble member (the packaged weights, unchanged on disk):
- fp32: today's model.
- bf16-trunk: torch.autocast("cpu", bfloat16) around each trunk layer (sequence attention + transition); its output
  goes back to fp32, so the structure module and all frame maths run as today.
- bf16-member: autocast around the whole member forward, but the frame and coordinate maths (Frames.apply,
  invert_apply, compose, quaternion_to_rotation, atom14_from_frames) run with autocast off, on fp32 inputs. IPA's
  attention, whose logits include the point distances, does run in bf16 (autocast casts its inputs).
- bf16-member-all: autocast around the whole member forward, frame maths included (the speed ceiling of bf16;
  not a candidate: rigid transforms in bf16 round coordinates to ~0.1-0.25 Å).
- bf16-linear: every nn.Linear under autocast, output back in fp32 (all else fp32, attention included), except
  FP32_LINEARS.
- int8-linear: torch.ao.quantization.quantize_dynamic on every nn.Linear (int8 weights, activations quantised per
  call) except FP32_LINEARS.

Speed: in one process, one torch thread, variants interleaved rep by rep (the starting variant rotating), CPU time
of `Predictor.predict_numbered` (features, 4 members, consensus, error) per Fv from `time.process_time`, which other
load on the shared machine changes less than wall time; median over reps. Inputs as benchmarks/speed.py
(trastuzumab, then val antibodies). Accuracy: `immunofold.evaluate.evaluate` on the whole val split, unrefined, for
fp32 and every variant that saves >= SAVING_TO_CHECK of fp32's CPU time at any batch size (with --accuracy-of-all:
every variant). A variant qualifies when no
region's mean RMSD is worse than fp32's by more than RMSD_MARGIN and every error Spearman is within SPEARMAN_MARGIN.
Also measured: how far a receptor's prediction moves with its batch neighbours (`batch_dependence`).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import functools
import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch  # noqa: E402
from common import DEFAULT_DATA_ROOT, RESULTS_DIR, machine_info  # noqa: E402
from speed import batch_sequences  # noqa: E402
from torch import nn  # noqa: E402

import immunofold.model.network as network  # noqa: E402
from immunofold import geometry  # noqa: E402
from immunofold.allocator import keep_freed_memory  # noqa: E402

SAVING_TO_CHECK = 0.10  # fraction of fp32's CPU time a variant must save before its accuracy is measured
RMSD_MARGIN = 0.01  # Å; largest allowed increase of any region's mean val RMSD
SPEARMAN_MARGIN = 0.005  # largest allowed change of any error Spearman
REPS = {1: 15, 8: 5, 64: 3}  # interleaved repetitions per batch size


def autocast_forward(forward):
    """`forward` under CPU bf16 autocast, its output returned in fp32."""
    @functools.wraps(forward)
    def wrapped(*args):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return forward(*args).float()
    return wrapped


def _fp32(function):
    """`function` with autocast off and its floating tensor arguments (and Frames' fields) in fp32."""
    def to_fp32(value):
        if torch.is_tensor(value) and value.is_floating_point():
            return value.float()
        if isinstance(value, geometry.Frames):
            return geometry.Frames(value.rot.float(), value.trans.float())
        return value

    @functools.wraps(function)
    def wrapped(*args):
        with torch.autocast("cpu", enabled=False):
            return function(*[to_fp32(a) for a in args])
    return wrapped


@contextlib.contextmanager
def fp32_geometry():
    """Within the block, the frame and coordinate maths the network calls run in fp32 even under autocast."""
    patches = [(geometry.Frames, name) for name in ("apply", "invert_apply", "compose")]
    patches += [(network, "quaternion_to_rotation"), (network, "atom14_from_frames")]
    originals = [getattr(owner, name) for owner, name in patches]
    for (owner, name), original in zip(patches, originals):
        setattr(owner, name, _fp32(original))
    try:
        yield
    finally:
        for (owner, name), original in zip(patches, originals):
            setattr(owner, name, original)


class AutocastMember(nn.Module):
    """A whole member under CPU bf16 autocast; with `fp32_frames`, its frame maths inside `fp32_geometry`."""

    def __init__(self, model: nn.Module, fp32_frames: bool):
        super().__init__()
        self.model, self.fp32_frames = model, fp32_frames
        self.config = model.config

    def forward(self, batch):
        with torch.autocast("cpu", dtype=torch.bfloat16), (fp32_geometry() if self.fp32_frames else contextlib.nullcontext()):
            output = self.model(batch)
        return {**output, "atom14": output["atom14"].float(), "predicted_error": output["predicted_error"].float()}


# Linear layers no variant changes: PairBias reads to_bias's weight directly; frame_update predicts each block's
# rotation and translation (Å) update, which feeds the frame maths.
FP32_LINEARS = {"pair_bias.to_bias"} | {f"blocks.{i}.frame_update" for i in range(16)}


def bf16_trunk(model):
    for layer in model.trunk:  # the layers stay in place: the network reads their attention-bias tables
        layer.forward = autocast_forward(layer.forward)
    return model


def bf16_linear(model):
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear) and name not in FP32_LINEARS:
            module.forward = autocast_forward(module.forward)
    return model


def int8_linear(model):
    names = {name for name, module in model.named_modules() if isinstance(module, nn.Linear) and name not in FP32_LINEARS}
    return torch.ao.quantization.quantize_dynamic(model, names, dtype=torch.qint8)


VARIANTS = {
    "fp32": lambda model: model,
    "bf16-trunk": bf16_trunk,
    "bf16-member": lambda model: AutocastMember(model, fp32_frames=True),
    "bf16-member-all": lambda model: AutocastMember(model, fp32_frames=False),
    "bf16-linear": bf16_linear,
    "int8-linear": int8_linear,
}


def variant_predictor(base, name: str):
    """A Predictor whose ensemble runs copies of `base`'s members transformed by VARIANTS[name]."""
    from immunofold.prediction import Predictor

    ensemble = copy.copy(base.ensemble)
    ensemble.models = [VARIANTS[name](copy.deepcopy(model)).eval() for model in base.ensemble.models]
    return Predictor(ensemble=ensemble)


def numbered_antibodies(data_root: str, size: int) -> list:
    """benchmarks/speed.py's `size` antibodies, numbered: [(name, kind, chains)]."""
    from immunofold.sequences import number_receptor

    return [(n, "antibody", number_receptor("antibody", {"heavy": h, "light": lt}, n))
            for n, h, lt in batch_sequences(data_root, "val", size)]


def measure_speed(predictors: dict, data_root: str, batch_sizes: list[int]) -> dict:
    """{batch size: {variant: [CPU ms per Fv of each rep]}}."""
    names = list(predictors)
    result = {}
    for size in batch_sizes:
        numbered = numbered_antibodies(data_root, size)
        for name in names:  # warm-up (oneDNN primitives, allocator)
            predictors[name].predict_numbered(numbered[:4])
        times = {name: [] for name in names}
        for rep in range(REPS.get(size, 3)):
            for name in names[rep % len(names):] + names[: rep % len(names)]:
                start = time.process_time()
                predictors[name].predict_numbered(numbered)
                times[name].append((time.process_time() - start) * 1000 / size)
        result[size] = times
        print(size, {n: round(statistics.median(t), 1) for n, t in times.items()}, flush=True)
    return result


def batch_dependence(predictor, numbered: list) -> float:
    """Largest atom shift (Å) of any of `numbered`'s receptors predicted alone vs all together in one group."""
    together = predictor.predict_numbered(numbered)
    alone = [predictor.predict_numbered([item])[0] for item in numbered]
    return float(max(abs(a.atom14 - b.atom14).max() for a, b in zip(together, alone)))


def accuracy_flat(summary: dict) -> dict[str, float]:
    """The summary's region RMSDs and error Spearmans as {"antibody H3": value, ...}."""
    flat = {}
    for kind in ("antibody", "nanobody", "tcr"):
        block = summary.get(kind) or {}
        if not block.get("n"):
            continue
        for region, value in block["rmsd"].items():
            flat[f"{kind} {region}"] = value
        for key in ("error_spearman", "error_spearman_spread", "error_spearman_head"):
            flat[f"{kind} {key}"] = block[key]
        for region, value in block["cdr3_error_spearman"].items():
            flat[f"{kind} {region} error spearman (across entries)"] = value
    return flat


def verdict(reference: dict[str, float], candidate: dict[str, float]) -> list[str]:
    """The metrics where `candidate` breaks the margins against `reference` (empty: it qualifies)."""
    failures = []
    for key, ref in reference.items():
        value = candidate.get(key)
        if ref is None or value is None:
            continue
        if "spearman" in key and round(abs(value - ref), 6) > SPEARMAN_MARGIN:  # the summary rounds to 3 decimals
            failures.append(f"{key} {ref:.3f} -> {value:.3f}")
        elif "spearman" not in key and value - ref > RMSD_MARGIN:
            failures.append(f"{key} {ref:.3f} -> {value:.3f} Å")
    return failures


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default=DEFAULT_DATA_ROOT)
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=[1, 8, 64])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--no-accuracy", action="store_true")
    parser.add_argument("--accuracy-of-all", action="store_true",
                        help=f"measure val accuracy of every variant, not only those saving >= {SAVING_TO_CHECK * 100:.0f} %%")
    parser.add_argument("--out", default=os.path.join(RESULTS_DIR, "precision.md"))
    args = parser.parse_args(argv)
    keep_freed_memory()
    torch.set_num_threads(1)
    from immunofold.evaluate import evaluate
    from immunofold.prediction import Predictor

    machine = machine_info()
    base = Predictor()
    names = ["fp32"] + [n for n in args.variants if n != "fp32"]
    predictors = {name: variant_predictor(base, name) for name in names}
    speed = measure_speed(predictors, args.data, args.batch_sizes)
    medians = {size: {n: statistics.median(t) for n, t in times.items()} for size, times in speed.items()}
    saving = {n: max(1 - medians[s][n] / medians[s]["fp32"] for s in medians) for n in names}
    dependence = {n: batch_dependence(predictors[n], numbered_antibodies(args.data, 4)) for n in names}
    accuracy, failures = {}, {}
    if not args.no_accuracy:
        for name in [n for n in names if n == "fp32" or args.accuracy_of_all or saving[n] >= SAVING_TO_CHECK]:
            summary, _ = evaluate(args.data, "val", predictors[name], refine=False, progress=False)
            accuracy[name] = accuracy_flat(summary)
            print(name, "accuracy done", flush=True)
        failures = {n: verdict(accuracy["fp32"], accuracy[n]) for n in accuracy if n != "fp32"}

    lines = [
        "# bf16 / int8 on the CPU for the model pass",
        "",
        f"Generated {time.strftime('%Y-%m-%d %H:%M:%S')} by `python benchmarks/precision.py`; weights "
        f"`{base.ensemble.version}`; {machine['cpu_model']}, {machine['cpu_count']} cores, torch "
        f"{machine['torch_version']}; load average at start {machine['load_average_at_start']}. Variants: see the "
        "script's docstring. CPU ms per Fv of `Predictor.predict_numbered` (features, 4 members, consensus, error), one "
        "torch thread, variants interleaved rep by rep; median (min-max) over reps. Alone vs in a group: the largest "
        "atom shift of any of 4 val antibodies predicted alone vs together (fp32: float rounding; the batch command "
        "promises outputs independent of batch composition).",
        "",
        "| variant | " + " | ".join(f"batch {s}" for s in medians) + " | largest saving | alone vs in a group (Å) |",
        "|---|" + "--:|" * (len(medians) + 2),
    ]
    for name in names:
        cells = [f"{medians[s][name]:.1f} ({min(speed[s][name]):.0f}-{max(speed[s][name]):.0f})" for s in medians]
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {100 * saving[name]:.1f} % | {dependence[name]:.4f} |")
    if accuracy:
        checked = [n for n in accuracy if n != "fp32"]
        lines += ["", "## Val accuracy, unrefined (all entries)", "",
                  f"Qualifies: no region's mean RMSD worse than fp32's by > {RMSD_MARGIN} Å, every error Spearman within "
                  f"{SPEARMAN_MARGIN}.", "",
                  "| metric | fp32 | " + " | ".join(checked) + " |", "|---|--:|" + "--:|" * len(checked)]
        for key, ref in accuracy["fp32"].items():
            cells = [accuracy[n].get(key) for n in checked]
            lines.append(f"| {key} | {ref if ref is None else f'{ref:.3f}'} | "
                         + " | ".join("-" if v is None else f"{v:.3f}" for v in cells) + " |")
        lines += [""] + [f"- **{n}**: " + ("qualifies" if not failures[n] else "fails: " + "; ".join(failures[n]))
                         for n in checked]
    text = "\n".join(lines)
    with open(args.out, "w") as handle:
        handle.write(text + "\n")
    with open(os.path.splitext(args.out)[0] + ".json", "w") as handle:
        json.dump({"machine": machine, "speed_ms_per_fv": speed, "saving": saving, "batch_dependence_A": dependence,
                   "accuracy": accuracy,
                   "failures": failures}, handle, indent=1)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
