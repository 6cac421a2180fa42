"""One config object per training run, read from YAML and saved next to its checkpoints and weights."""

from __future__ import annotations

import math
import types
import typing
from dataclasses import MISSING, asdict, dataclass, field, fields

import yaml

from immunofold.constants import KINDS
from immunofold.model.network import ModelConfig

DEFAULT_LOSS_WEIGHTS = {
    "fape_backbone": 1.0,
    "fape_all_atom": 0.5,
    "torsion": 0.5,
    "bond": 0.3,  # structural violations: only from `violation_from_epoch` on (they swamp early training)
    "clash": 0.3,
    "error": 0.1,
    "cdr_rmsd": 0.0,  # CDR RMSD after framework superposition (losses.cdr_rmsd); off in v0.1/v0.2 runs
    "disulfide": 0.0,  # SG-SG distance error of the truth's disulfides (losses.disulfide_loss); from v0.7
    "distogram": 0.3,  # binned CB-CB distance cross-entropy (losses.distogram_loss); only with model.distogram_bins > 0
    "cdr3_class": 0.2,  # NbFrame CDR3-class cross-entropy on sequence-only rows (data.cdr3_classes); only with model.cdr3_class_head
}
VIOLATION_TERMS = ("bond", "clash")
_UNION_TYPES = (typing.Union, types.UnionType)  # `X | None` in annotations, either spelling
MAX_THREADS = 1024  # torch's thread count must fit a C int; more than any machine here has


@dataclass
class TrainConfig:
    name: str
    seed: int = 0
    data_root: str = "../shared/data"
    cache_dir: str = "cache"
    run_dir: str = "runs"
    train_split: str = "train"
    val_split: str = "val"
    epochs: int = 60
    batch_size: int = 8
    learning_rate: float = 5e-4
    warmup_steps: int = 100
    weight_decay: float = 0.0
    grad_clip: float = 10.0
    violation_from_epoch: int = 0  # epochs before this one train without the violation terms
    oversample: dict[str, int] = field(default_factory=dict)  # kind -> times each example is seen per epoch
    aux_kinds: list[str] = field(default_factory=list)  # kinds of the extra heavy-chain backbones (data/aux.py) to train on
    train_kinds: list[str] = field(default_factory=list)  # train on these receptor kinds only (empty: all)
    exclude_sources: list[str] = field(default_factory=list)  # train without the entries of these summary.tsv `source`s (keeps an out-of-fold set unseen)
    cdr3_fape_weight: float = 1.0  # FAPE weight of CDR3 points relative to the others
    cdr3_cluster_sampling: bool = False  # each epoch: one random example per identical-CDR3 cluster
    distillation: bool = False  # also train on the shipped ensemble's predictions of receptors without a structure (data.distillation)
    distillation_pairs: dict[str, int] = field(default_factory=dict)  # chain-shuffled receptors per kind (antibody, tcr); default data.distillation.SHUFFLED_PAIRS
    standing_out_oversample: int = 1  # nanobody examples whose experimental CDR3 stands out (reach > 27 Å) count this many times more
    cdr3_class_batch: int = 4  # with model.cdr3_class_head: NbFrame label rows per step (trunk and class head only)
    cdr3_curriculum_epochs: int = 0  # > 0: the first epochs train on short CDR3s first (train.loop.curriculum_examples)
    decay_after_epochs: int = 0  # learning rate stays at its peak (after warm-up) for this many epochs, then cosine
    fit_epochs_to_minutes: float | None = None  # fresh runs only: after epoch 1, set `epochs` to fit this wall time
    ema_decay: float = 0.0  # > 0: also keep an exponential moving average of the weights (per step); it is validated and saved
    threads: int = 1
    max_minutes: float | None = None  # stop this invocation after this long (resume later)
    init_from: str | None = None  # weights (.safetensors) to start from when no checkpoint exists
    model: ModelConfig = field(default_factory=ModelConfig)
    loss_weights: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_LOSS_WEIGHTS))

    @staticmethod
    def from_yaml(path: str) -> "TrainConfig":
        """The config of a YAML file; ValueError naming the file and the reason (unreadable, not YAML, unknown key)."""
        try:
            with open(path) as handle:
                raw = yaml.safe_load(handle) or {}
        except OSError as error:
            raise ValueError(f"{path}: {error.strerror or error}") from None
        except yaml.YAMLError as error:
            mark = getattr(error, "problem_mark", None)
            where = f" (line {mark.line + 1})" if mark is not None else ""
            raise ValueError(f"{path}: not valid YAML{where}") from None
        model_raw = raw.pop("model", None) if isinstance(raw, dict) else []
        model_raw = {} if model_raw is None else model_raw
        if not isinstance(raw, dict) or not isinstance(model_raw, dict):
            raise ValueError(f"{path}: expected a mapping of config keys (and a 'model' mapping)")
        unknown = sorted(map(str, set(raw) - {f.name for f in fields(TrainConfig)}))
        unknown += [f"model.{key}" for key in sorted(map(str, set(model_raw) - {f.name for f in fields(ModelConfig)}))]
        if unknown:
            raise ValueError(f"{path}: unknown config key(s) {', '.join(unknown)}")
        problem = _type_problem(raw, TrainConfig, "") or _type_problem(model_raw, ModelConfig, "model.")
        if problem:
            raise ValueError(f"{path}: {problem}")
        model = ModelConfig(**model_raw)
        weights = {**DEFAULT_LOSS_WEIGHTS, **raw.pop("loss_weights", {})}
        config = TrainConfig(model=model, loss_weights=weights, **raw)
        problem = config.value_problem()
        if problem:
            raise ValueError(f"{path}: {problem}")
        return config

    def value_problem(self) -> str:
        """What is wrong with this config's values (one line), or ""."""
        if not self.name.strip():
            return "name must not be empty (it names the run's folder)"
        model = self.model
        positive = [(name, getattr(self, name)) for name in (
            "epochs", "batch_size", "learning_rate", "threads", "cdr3_class_batch", "standing_out_oversample")]
        positive += [(f"model.{name}", getattr(model, name)) for name in (
            "dim", "trunk_layers", "trunk_heads", "ipa_blocks", "structure_passes", "ipa_heads", "error_bins", "error_max")]
        positive += [(name, getattr(self, name)) for name in ("fit_epochs_to_minutes", "max_minutes")
                     if getattr(self, name) is not None]
        for name, value in positive:
            if value <= 0:
                return f"{name} must be positive, got {value}"
        at_least_zero = [(name, getattr(self, name)) for name in (
            "warmup_steps", "weight_decay", "grad_clip", "violation_from_epoch", "cdr3_curriculum_epochs",
            "decay_after_epochs", "cdr3_fape_weight")]
        at_least_zero += [(f"model.{name}", getattr(model, name)) for name in (
            "pair_dim", "language_dim", "distogram_bins", "distogram_dim")]
        at_least_zero += [(f"loss_weights.{name}", weight) for name, weight in self.loss_weights.items()]
        for name, value in at_least_zero:
            if value < 0:
                return f"{name} must be 0 or more, got {value}"
        fractions = [("ema_decay", self.ema_decay)]
        fractions += [(f"model.{name}", getattr(model, name)) for name in ("dropout", "restype_dropout", "language_dropout")]
        for name, value in fractions:
            if not 0.0 <= value < 1.0:
                return f"{name} must be in [0, 1), got {value}"
        if model.dim % model.trunk_heads:
            return f"model.dim ({model.dim}) must be a multiple of model.trunk_heads ({model.trunk_heads})"
        if not 0 <= self.seed < 2**63:
            return f"seed must be in [0, 2^63), got {self.seed}"
        if self.threads > MAX_THREADS:
            return f"threads must be at most {MAX_THREADS}, got {self.threads}"
        for name in ("aux_kinds", "train_kinds"):
            unknown = [kind for kind in getattr(self, name) if kind not in KINDS]
            if unknown:
                return f"{name}: unknown receptor kind(s) {', '.join(map(str, unknown))} (known: {', '.join(KINDS)})"
        unknown = [kind for kind in self.oversample if kind not in KINDS]
        if unknown:
            return f"oversample: unknown receptor kind(s) {', '.join(map(str, unknown))} (known: {', '.join(KINDS)})"
        if any(times < 1 for times in self.oversample.values()):
            return "oversample: every kind must be seen at least once per epoch (1 or more)"
        unknown = [kind for kind in self.distillation_pairs if kind not in ("antibody", "tcr")]
        if unknown:
            return f"distillation_pairs: only paired kinds are chain-shuffled (antibody, tcr), not {', '.join(map(str, unknown))}"
        if any(count < 0 for count in self.distillation_pairs.values()):
            return "distillation_pairs: counts must be 0 or more"
        unknown = sorted(set(self.loss_weights) - set(DEFAULT_LOSS_WEIGHTS))
        if unknown:
            return f"loss_weights: unknown term(s) {', '.join(unknown)} (known: {', '.join(DEFAULT_LOSS_WEIGHTS)})"
        if self.fit_epochs_to_minutes is not None and self.decay_after_epochs < 1:
            return ("fit_epochs_to_minutes needs decay_after_epochs >= 1 (the schedule must not depend on the epoch "
                    "count chosen after epoch 1)")
        return ""

    def to_dict(self) -> dict:
        return asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


def _type_problem(raw: dict, cls: type, prefix: str) -> str:
    """The first key of `raw` whose value does not fit its field's type in dataclass `cls` (or a required field
    missing), as one line; "" if all fit. Numbers YAML read as text (1e-3) become floats in `raw`."""
    hints = typing.get_type_hints(cls)
    for name, value in raw.items():  # PyYAML reads 1e-3 (no dot) as text: take it as the number it means
        if isinstance(value, str) and float in (hints.get(name), *typing.get_args(hints.get(name))):
            raw[name] = _number_or_text(value)
        if name == "loss_weights" and isinstance(value, dict):
            raw[name] = {term: _number_or_text(weight) if isinstance(weight, str) else weight
                         for term, weight in value.items()}
    for item in fields(cls):
        if item.name not in raw and item.default is MISSING and item.default_factory is MISSING:
            return f"missing required key {prefix}{item.name}"
    for name, value in raw.items():
        if name == "model":
            continue
        hint = dict[str, float] if name == "loss_weights" else hints[name]
        if not _fits(value, hint):
            return f"{prefix}{name}: expected {_type_name(hint)}, got {value!r}"
    return ""


def _number_or_text(text: str):
    """float(text) if it reads as one (YAML's 1e-3), else the text."""
    try:
        return float(text)
    except ValueError:
        return text


def _fits(value, hint) -> bool:
    """Whether a YAML value fits a field type (int, float, str, bool, their lists and str-keyed dicts, Optional)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in _UNION_TYPES:
        return any(_fits(value, arg) for arg in args)
    if hint is type(None):
        return value is None
    if origin is list:
        return isinstance(value, list) and all(_fits(item, args[0]) for item in value)
    if origin is dict:
        return isinstance(value, dict) and all(_fits(k, args[0]) and _fits(v, args[1]) for k, v in value.items())
    if hint is bool:
        return isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, hint)


def _type_name(hint) -> str:
    """'an integer', 'a list of str', ... for error messages."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in _UNION_TYPES:
        return " or ".join(_type_name(arg) for arg in args if arg is not type(None)) + " (or null)"
    if origin is list:
        return f"a list of {args[0].__name__}"
    if origin is dict:
        return f"a mapping of {args[0].__name__} to {args[1].__name__}"
    return {int: "an integer", float: "a finite number", str: "a string", bool: "true or false"}.get(hint, hint.__name__)
