"""Resumable training of one ensemble member on the CPU (or a GPU when one is lent).

Checkpoints (model, optimizer, step, epoch, best score, RNG) go to `<run_dir>/<name>/last.pt`
after every epoch, written atomically; `best.safetensors` keeps the weights with the best val
score (with `ema_decay`, of the weights' moving average; the raw weights' val is logged beside it).
Starting the same command again continues from `last.pt`. Metrics: one JSON line per epoch in
`<run_dir>/<name>/log.jsonl`.
"""

from __future__ import annotations

import ctypes
import json
import math
import os
import random
import subprocess
import time

import numpy as np
import torch

from immunofold.constants import KINDS, is_cdr
from immunofold.data.features import collate
from immunofold.data.aux import cached_aux_examples
from immunofold.data.cdr3_classes import CLASS_FILE, cached_class_examples
from immunofold.data.distillation import cached_distillation_examples
from immunofold.data.language import attach_language_features
from immunofold.data.sabdab import cached_examples, names_of_sources
from immunofold.data.template import build_template
from immunofold.metrics import STANDING_OUT_REACH, cdr3_reach, region_rmsds, roc_auc
from immunofold.model.network import ImmunoFoldNet
from immunofold.train.config import VIOLATION_TERMS, TrainConfig
from immunofold.train.losses import total_loss
from immunofold.weights import load_weights, save_weights

CDR3_REGIONS = {"antibody": ("H3",), "nanobody": ("H3",), "tcr": ("A3", "B3")}


def length_bucketed_batches(lengths: list[int], batch_size: int, rng: random.Random) -> list[list[int]]:
    """Indices grouped into batches of similar length (little padding), in random batch order."""
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i] + rng.random() * 8))
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    rng.shuffle(batches)
    return batches


def describe_device(device: torch.device) -> str:
    """e.g. 'cpu (2 cores, 1 torch threads)' or 'cuda (NVIDIA H100 80GB HBM3)'."""
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    return f"cpu ({os.cpu_count()} cores, {torch.get_num_threads()} torch threads)"


def move(batch: dict, device: torch.device) -> dict:
    return {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}


@torch.no_grad()
def validate(model: ImmunoFoldNet, examples: list[dict], device: torch.device, batch_size: int = 8) -> dict:
    """Mean region RMSDs per kind on `examples`, and a single score (mean CDR3 + framework RMSD over kinds); with a
    CDR3-class head also how its logit ranks the nanobodies whose experimental CDR3 stands out (ROC AUC, accuracy)."""
    model.eval()
    per_kind: dict[str, list[dict]] = {k: [] for k in KINDS}
    class_logits, standing_out = [], []
    for start in range(0, len(examples), batch_size):
        chunk = examples[start : start + batch_size]
        output = model(move(collate(chunk), device))
        for i, example in enumerate(chunk):
            n = len(example["restype"])
            kind = KINDS[int(example["kind"])]
            per_kind[kind].append(
                region_rmsds(
                    kind, output["atom14"][i, :n].cpu(), example["atom14"], example["atom_mask"],
                    example["chain_slot"], example["imgt_position"],
                )
            )
            if "cdr3_class_logit" in output and kind == "nanobody":
                reach = cdr3_reach(example["atom14"], example["atom_mask"], example["chain_slot"], example["imgt_position"])
                if reach is not None:
                    class_logits.append(float(output["cdr3_class_logit"][i]))
                    standing_out.append(reach > STANDING_OUT_REACH)
    model.train()
    summary, score_terms = {}, []
    for kind, rows in per_kind.items():
        if not rows:
            continue
        keys = sorted({k for r in rows for k in r})
        summary[kind] = {k: round(float(np.mean([r[k] for r in rows if k in r])), 3) for k in keys}
        score_terms += [summary[kind][k] for k in CDR3_REGIONS[kind]]
        score_terms += [summary[kind][k] for k in keys if k.endswith("fr")]
    summary["score"] = round(float(np.mean(score_terms)), 4)
    if class_logits:
        logits, positive = np.array(class_logits), np.array(standing_out)
        summary["cdr3_class"] = {"auc": round(roc_auc(logits, positive), 3),
                                 "accuracy": round(float(((logits > 0) == positive).mean()), 3)}
    return summary


def learning_rate(step: int, config: TrainConfig, steps_per_epoch: int) -> float:
    """Linear warm-up, a plateau until `decay_after_epochs`, then cosine decay to 10% by the last epoch."""
    if step < config.warmup_steps:
        return config.learning_rate * (step + 1) / config.warmup_steps
    decay_start = max(config.warmup_steps, config.decay_after_epochs * steps_per_epoch)
    total_steps = config.epochs * steps_per_epoch
    progress = min(1.0, max(0, step - decay_start) / max(1, total_steps - decay_start))
    return config.learning_rate * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def fitted_epochs(config: TrainConfig, first_epoch_s: float) -> int:
    """Epochs that fit `fit_epochs_to_minutes` of wall time, given the first epoch's time (s)."""
    return max(config.decay_after_epochs + 1, int(config.fit_epochs_to_minutes * 60 // first_epoch_s))


def training_examples(config: TrainConfig) -> list[dict]:
    """The unique training examples of a config: its split, the extra backbones it names, the distillation set if
    asked, its kinds."""
    examples = cached_examples(config.data_root, config.train_split, config.cache_dir)
    if config.exclude_sources:
        excluded = names_of_sources(config.data_root, config.exclude_sources)
        examples = [e for e in examples if e["name"] not in excluded]
    if config.aux_kinds:
        aux = cached_aux_examples(config.data_root, config.cache_dir, config.val_split)
        examples = examples + [e for e in aux if KINDS[int(e["kind"])] in config.aux_kinds]
    if config.distillation:
        examples = examples + cached_distillation_examples(config.data_root, config.cache_dir, config.train_split, config.val_split,
                                                           config.distillation_pairs, config.exclude_sources)
    if config.train_kinds:
        examples = [e for e in examples if KINDS[int(e["kind"])] in config.train_kinds]
    return examples


def cdr3_cluster_key(example: dict) -> tuple:
    """Receptor kind and the residue types of each chain's CDR3 (IMGT 105-117): identical CDR3s share a key."""
    in_cdr3 = is_cdr(example["imgt_position"], 3)
    return (int(example["kind"]),) + tuple(
        tuple(example["restype"][in_cdr3 & (example["chain_slot"] == slot)].tolist()) for slot in (0, 1)
    )


def longest_cdr3(example: dict) -> int:
    """Residues in the example's longest CDR3 (IMGT 105-117, over its chains)."""
    in_cdr3 = is_cdr(example["imgt_position"], 3)
    return max(int((in_cdr3 & (example["chain_slot"] == slot)).sum()) for slot in (0, 1))


CURRICULUM_START_FRACTION = 0.5  # share of each kind (shortest CDR3s) in a curriculum's first epoch


def curriculum_examples(examples: list[dict], epoch: int, curriculum_epochs: int) -> list[dict]:
    """Curriculum on CDR3 length: in epoch `epoch` (0-based) < `curriculum_epochs`, the examples of each
    kind whose longest CDR3 is within that kind's shortest fraction f (rising linearly from
    CURRICULUM_START_FRACTION to 1 over the curriculum; ties included); afterwards all of them."""
    if epoch >= curriculum_epochs:
        return examples
    fraction = CURRICULUM_START_FRACTION + (1 - CURRICULUM_START_FRACTION) * epoch / curriculum_epochs
    lengths = [longest_cdr3(e) for e in examples]
    kinds = [int(e["kind"]) for e in examples]
    limit = {kind: np.quantile([n for n, k in zip(lengths, kinds) if k == kind], fraction, method="lower") for kind in set(kinds)}
    return [e for e, n, k in zip(examples, lengths, kinds) if n <= limit[k]]


def epoch_examples(examples: list[dict], config: TrainConfig, rng: random.Random, epoch: int | None = None) -> list[dict]:
    """One epoch's examples: all of them, or with `cdr3_cluster_sampling` one random example per
    CDR3 cluster (so a CDR3 solved in 40 PDB entries counts once); each repeated as its kind is oversampled.
    With `cdr3_curriculum_epochs`, epoch `epoch` (0-based; None: a full epoch) first keeps the curriculum's share;
    with `standing_out_oversample`, nanobodies whose CDR3 stands out are repeated that many times more."""
    if epoch is not None:
        examples = curriculum_examples(examples, epoch, config.cdr3_curriculum_epochs)
    if config.cdr3_cluster_sampling:
        clusters: dict[tuple, list[dict]] = {}
        for example in examples:
            clusters.setdefault(cdr3_cluster_key(example), []).append(example)
        examples = [rng.choice(members) for members in clusters.values()]
    return [e for e in examples for _ in range(config.oversample.get(KINDS[int(e["kind"])], 1) * extra_copies(e, config))]


def extra_copies(example: dict, config: TrainConfig) -> int:
    """`standing_out_oversample` for a nanobody example whose experimental CDR3 stands out of the domain, else 1."""
    if config.standing_out_oversample == 1 or KINDS[int(example["kind"])] != "nanobody":
        return 1
    reach = cdr3_reach(example["atom14"], example["atom_mask"], example["chain_slot"], example["imgt_position"])
    return config.standing_out_oversample if reach is not None and reach > STANDING_OUT_REACH else 1


def cdr3_class_loss(logit: torch.Tensor, extended: torch.Tensor) -> torch.Tensor:
    """Mean binary cross-entropy of CDR3-class logits [B] against labels [B] (1.0 = Extended)."""
    return torch.nn.functional.binary_cross_entropy_with_logits(logit, extended)


def _save_atomic(obj, path: str) -> None:
    tmp = path + ".tmp"
    torch.save(obj, tmp)
    os.replace(tmp, path)


def keep_freed_memory() -> None:
    """Ask glibc to keep freed memory instead of returning large blocks to the kernel after every step.

    Training allocates and frees the same multi-MB tensors every step; with glibc's defaults each
    is a fresh mmap whose pages the kernel must zero, which cost about 20% of a step here (system time).
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc: nothing to tune
        return
    m_trim_threshold, m_top_pad, m_mmap_threshold = -1, -2, -3
    libc.mallopt(m_mmap_threshold, 1 << 30)
    libc.mallopt(m_trim_threshold, 1 << 30)
    libc.mallopt(m_top_pad, 256 << 20)


def source_commit() -> str:
    """The git commit of the code being run ('unknown' outside a git checkout); '+dirty' if it has local changes."""
    root = os.path.dirname(os.path.abspath(__file__))
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root, capture_output=True, text=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return commit + ("+dirty" if dirty else "")


class TrainingSetupError(ValueError):
    """A config whose data or starting weights cannot be used (found before the first step)."""


def build_model(config: TrainConfig, device: torch.device) -> ImmunoFoldNet:
    """A fresh model whose initial weights, like the rest of the run (data order, dropout), follow `config.seed`."""
    random.seed(config.seed)
    torch.manual_seed(config.seed)
    return ImmunoFoldNet(config.model).to(device)


ZERO_EFFECT_ADDITIONS = (".bias.cysteine", "pair_bias.", "embedding.language.", "cdr3_class_head.")  # modules a config may add to an init_from model; no effect at start


def load_init_weights(model: ImmunoFoldNet, state: dict) -> list[str]:
    """Load `state` into `model`; only additions that start with no effect (ZERO_EFFECT_ADDITIONS) may be missing. Returns those."""
    missing, unexpected = model.load_state_dict(state, strict=False)
    not_new = [k for k in missing if not any(part in k for part in ZERO_EFFECT_ADDITIONS)]
    if not_new or unexpected:
        raise TrainingSetupError(f"init_from weights do not fit the model: missing {not_new}, unexpected {unexpected}")
    return missing


def train(config: TrainConfig, log=print) -> dict:
    """Train (or continue training) one model; returns the best val summary."""
    torch.set_num_threads(config.threads)
    keep_freed_memory()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    run_dir = os.path.join(config.run_dir, config.name)
    checkpoint_path = os.path.join(run_dir, "last.pt")
    if not os.path.exists(checkpoint_path) and config.init_from and not os.path.exists(config.init_from):
        raise FileNotFoundError(f"init_from {config.init_from} not found (the config's comment says how to restore it)")
    unique_examples = training_examples(config)
    if not unique_examples:
        raise FileNotFoundError(f"no training examples of split {config.train_split!r} under data_root "
                                f"{config.data_root} (sabdab/ or stcrdab/ summary.tsv and structures)")
    class_examples = []
    if config.model.cdr3_class_head:
        try:
            class_examples = cached_class_examples(config.data_root, config.cache_dir, config.val_split)
        except ValueError as error:  # a bad label table
            raise TrainingSetupError(str(error)) from None
        if len(class_examples) < config.cdr3_class_batch:
            raise TrainingSetupError(f"model.cdr3_class_head needs at least cdr3_class_batch ({config.cdr3_class_batch}) usable "
                             f"rows in {os.path.join(config.data_root, CLASS_FILE)}; it has {len(class_examples)}")
    os.makedirs(run_dir, exist_ok=True)
    with open(os.path.join(run_dir, "config.yaml"), "w") as handle:
        handle.write(config.to_yaml())

    val_examples = cached_examples(config.data_root, config.val_split, config.cache_dir)
    if config.train_kinds:  # a specialist is validated (and its best epoch chosen) on its own kinds
        val_examples = [e for e in val_examples if KINDS[int(e["kind"])] in config.train_kinds]
    if config.model.language_dim > 0:  # computed once per sequence, cached beside the examples
        attach_language_features(unique_examples + val_examples + class_examples, config.cache_dir)
    model = build_model(config, device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
    average = None
    if config.ema_decay > 0:
        average = torch.optim.swa_utils.AveragedModel(
            model, multi_avg_fn=torch.optim.swa_utils.get_ema_multi_avg_fn(config.ema_decay), use_buffers=True
        )
    state = {"epoch": 0, "step": 0, "best_score": float("inf"), "best": None, "elapsed_s": 0.0}
    if os.path.exists(checkpoint_path):
        checkpoint = torch.load(checkpoint_path, map_location=device, weights_only=False)
        model.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        if average is not None and checkpoint.get("average") is not None:
            average.load_state_dict(checkpoint["average"])
        elif average is not None:  # ema_decay switched on for a run written without it
            average.update_parameters(model)
            log(f"{config.name}: the checkpoint has no weight average; the average starts from the resumed weights")
        state = checkpoint["state"]
        random.setstate(checkpoint["python_rng"])
        torch.set_rng_state(checkpoint["torch_rng"])
        log(f"resumed {config.name} at epoch {state['epoch']} (step {state['step']})")
        if config.fit_epochs_to_minutes is not None and "fitted_epochs" in state:  # keep the schedule chosen before
            config.epochs, config.fit_epochs_to_minutes = state["fitted_epochs"], None
    elif config.init_from:
        added = load_init_weights(model, load_weights(config.init_from)[0])
        log(f"started {config.name} from {config.init_from}" + (f" ({len(added)} new tensors, no effect at start)" if added else ""))
    else:
        structures = cached_examples(config.data_root, config.train_split, config.cache_dir)
        model.template_atoms.copy_(build_template(structures).to(device))
        log(f"started {config.name} from scratch (seed {config.seed})")
    if average is not None and state["step"] == 0:
        average.update_parameters(model)  # the average starts from the starting weights

    commit = source_commit()
    # the learning-rate schedule counts full epochs (a curriculum's shorter first epochs end its decay a little above 10 %)
    steps_per_epoch = math.ceil(len(epoch_examples(unique_examples, config, random.Random(0))) / config.batch_size)
    started = time.time()
    model.train()
    while state["epoch"] < config.epochs:
        if config.max_minutes is not None and time.time() - started > config.max_minutes * 60:
            log(f"time budget of {config.max_minutes} min reached; stopping (resumable)")
            break
        epoch_start = time.time()
        rng = random.Random(config.seed * 100003 + state["epoch"])
        sums: dict[str, float] = {}
        train_examples = epoch_examples(unique_examples, config, rng, state["epoch"])
        batches = length_bucketed_batches([len(e["restype"]) for e in train_examples], config.batch_size, rng)
        weights = dict(config.loss_weights)
        if state["epoch"] < config.violation_from_epoch:
            weights.update({term: 0.0 for term in VIOLATION_TERMS})
        for batch_indices in batches:
            batch = move(collate([train_examples[i] for i in batch_indices]), device)
            for group in optimizer.param_groups:
                group["lr"] = learning_rate(state["step"], config, steps_per_epoch)
            output = model(batch)
            loss, terms = total_loss(output, batch, weights, config.model.error_max, config.cdr3_fape_weight)
            if class_examples:
                rows = collate(rng.sample(class_examples, config.cdr3_class_batch))
                class_loss = cdr3_class_loss(model.sequence_only_cdr3_class_logit(move(rows, device)), rows["cdr3_extended"].to(device))
                loss = loss + weights["cdr3_class"] * class_loss
                terms["cdr3_class"] = class_loss.detach()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
            optimizer.step()
            if average is not None:
                average.update_parameters(model)
            state["step"] += 1
            for k, v in {"loss": loss.detach(), **terms}.items():
                sums[k] = sums.get(k, 0.0) + v
        state["epoch"] += 1
        state["elapsed_s"] += time.time() - epoch_start
        kept = model if average is None else average.module  # the weights validated and saved as best
        val = validate(kept, val_examples, device)
        record = {
            "epoch": state["epoch"],
            "step": state["step"],
            "epoch_s": round(time.time() - epoch_start, 1),
            "elapsed_s": round(state["elapsed_s"], 1),
            "train": {k: round(float(v) / len(batches), 4) for k, v in sums.items()},
            "val": val,
        }
        if average is not None:
            record["val_raw"] = validate(model, val_examples, device)
        with open(os.path.join(run_dir, "log.jsonl"), "a") as handle:
            handle.write(json.dumps(record) + "\n")
        log(json.dumps(record))
        if config.fit_epochs_to_minutes is not None and state["epoch"] == 1:
            config.epochs = state["fitted_epochs"] = fitted_epochs(config, time.time() - epoch_start)
            config.fit_epochs_to_minutes = None  # the saved config now names the epochs: it reproduces this run anywhere
            with open(os.path.join(run_dir, "config.yaml"), "w") as handle:
                handle.write(config.to_yaml())
            log(f"{config.name}: first epoch took {time.time() - epoch_start:.0f} s; training {config.epochs} epochs")
        if val["score"] < state["best_score"]:
            state["best_score"], state["best"] = val["score"], val
            save_weights(
                kept, os.path.join(run_dir, "best.safetensors"),
                {"config": config.to_dict(), "epoch": state["epoch"], "val": val,
                 "train_seconds": round(state["elapsed_s"]), "device": describe_device(device),
                 "commit": commit, "train_examples": len(unique_examples)},
            )
        _save_atomic(
            {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "state": state,
             "average": average.state_dict() if average is not None else None,
             "python_rng": random.getstate(), "torch_rng": torch.get_rng_state()},
            checkpoint_path,
        )
    return state["best"] or {}
