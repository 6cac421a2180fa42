"""Command-line interface: `immunofold predict|batch|evaluate|train|serve`."""

from __future__ import annotations

import argparse
import math
import os
import signal
import sys
import threading


def _train(args: argparse.Namespace) -> int:
    from immunofold.train.config import TrainConfig
    from immunofold.train.loop import TrainingSetupError, train

    if args.threads is not None and args.threads < 1:
        print(f"error: --threads {args.threads}: give 1 or more", file=sys.stderr)
        return 2
    if args.max_minutes is not None and args.max_minutes <= 0:
        print(f"error: --max-minutes {args.max_minutes}: give a positive number", file=sys.stderr)
        return 2
    try:
        config = TrainConfig.from_yaml(args.config)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if args.max_minutes is not None:
        config.max_minutes = args.max_minutes
    if args.threads is not None:
        config.threads = args.threads
    try:
        best = train(config, log=lambda line: print(line, flush=True))
    except (OSError, TrainingSetupError) as error:  # missing data or starting weights, a bad label table
        print(f"error: {args.config}: {error}", file=sys.stderr)
        return 2
    print(f"best val: {best}")
    return 0


FAST_HELP = (
    "the fast member set: antibodies by two distilled members instead of four (model pass about twice as fast; on val "
    "every region within 0.03 Å, README); nanobodies and TCRs keep all four"
)
CLEAN_GEOMETRY_HELP = (
    "with --no-refine: join residues by real peptide bonds and remove clashes without OpenMM (~35 ms per model; "
    "on val CDR3 RMSD +0.04-0.09 Å, like refinement)"
)


def _option_problem(args: argparse.Namespace) -> str | None:
    """Why the options of `immunofold predict` contradict each other, else None."""
    from immunofold.developability import PROFILED_KINDS
    from immunofold.io import FORMAT_BY_SUFFIX

    if args.developability and args.kind not in PROFILED_KINDS:
        return "--developability: profiles cover antibodies and nanobodies, not TCRs"
    if args.threads is not None and args.threads < 1:
        return f"--threads {args.threads}: give 1 or more"
    if args.clean_geometry and not args.no_refine:
        return "--clean-geometry applies to unrefined models: add --no-refine (refined models have real geometry)"
    stem, suffix = os.path.splitext(args.output)
    implied = FORMAT_BY_SUFFIX.get(suffix.lower())
    if args.format and implied and implied != args.format:
        return f"-o {args.output} ends in {suffix.lower()} but --format is {args.format}; name it {stem}.{args.format}"
    return None


def _output_problem(args: argparse.Namespace) -> str | None:
    """Why the outputs of `immunofold predict` cannot be written (checked before the model runs), else None."""
    from immunofold.io import prepare_output_folder

    if args.name is not None and (not args.name.strip() or os.path.basename(args.name) != args.name or args.name in (".", "..")):
        return f"--name {args.name!r}: give a plain name, without folders"
    if os.path.isdir(args.output):
        return f"-o {args.output} is a folder; give a file name such as {os.path.join(args.output, 'model.pdb')}"
    if not os.path.basename(args.output):
        return f"-o {args.output!r} names no file; give a file name such as {os.path.join(args.output, 'model.pdb')}"
    if args.output.lower().endswith(".gz"):
        return f"-o {args.output}: models are written uncompressed; name it .pdb or .cif"
    if os.path.islink(args.output) and not os.path.isdir(os.path.dirname(os.path.realpath(args.output))):
        return f"-o {args.output} links to {os.readlink(args.output)}, whose folder does not exist"
    if os.path.exists(args.output) and not os.path.isfile(args.output):
        return f"-o {args.output} is not a regular file (a device or pipe would be replaced); give a file name"
    sidecar = developability_path(args.output)
    if args.developability and os.path.exists(sidecar) and not os.path.isfile(sidecar):
        return f"--developability: {sidecar} is not a regular file (its profile goes there); move it or name -o otherwise"
    for option, folder in (("-o", os.path.dirname(args.output)), ("--save-ensemble", args.save_ensemble)):
        if folder is None:
            continue
        try:
            if prepare_output_folder(folder):
                print(f"note: created folder {folder}", file=sys.stderr)
        except OSError as error:
            return f"{option}: {error}"
    return None


def _predict(args: argparse.Namespace) -> int:
    import warnings

    from immunofold.io import FORMAT_BY_SUFFIX
    from immunofold.prediction import Predictor, check_device
    from immunofold.sequences import InputError, number_receptor

    chains = {slot: getattr(args, slot) for slot in ("heavy", "light", "alpha", "beta") if getattr(args, slot, None)}
    name = args.name or os.path.splitext(os.path.basename(args.output))[0]
    fmt = args.format or FORMAT_BY_SUFFIX.get(os.path.splitext(args.output)[1].lower(), "pdb")
    problem = _option_problem(args)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    try:  # the input first: a bad sequence leaves no folder behind
        numbered = number_receptor(args.kind, chains, name)
    except InputError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    problem = _output_problem(args)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    try:
        check_device(args.device, "--device")
        if args.threads:
            import torch

            torch.set_num_threads(args.threads)
        predictor = Predictor(device=args.device, clean_geometry=args.clean_geometry, members_side_by_side=True,
                              fast=args.fast)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            prediction = predictor.predict_numbered([(name, args.kind, numbered)], args.numbering)[0]
            if not args.no_refine:
                prediction = predictor.refine(prediction)
        for note in prediction.notes:
            print(f"note: {note}", file=sys.stderr)
        if prediction.refined and prediction.refine_message:  # backbone outliers refinement could not remove
            print(f"note: {prediction.refine_message}", file=sys.stderr)
        for warning in caught:
            print(f"warning: {warning.message}", file=sys.stderr)
        prediction.save(args.output, fmt)
        if args.save_ensemble:
            prediction.save_ensemble(args.save_ensemble, fmt)
    except InputError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except OSError as error:  # e.g. the disk filled up while writing
        print(f"error: cannot write {args.output}: {error.strerror or error}", file=sys.stderr)
        return 2
    cdr3 = [f"{cid}3 {'n/a' if math.isnan(err) else f'{err:.2f}'}" for cid, err in prediction.cdr3_errors().items()]
    print(
        f"wrote {args.output}: {prediction.kind}, {len(prediction.error)} residues, "
        f"mean error {prediction.mean_error:.2f} Å ({', '.join(cdr3)} Å), "
        f"{'refined' if prediction.refined else 'unrefined, geometry cleaned' if prediction.geometry_cleaned else 'unrefined'}, "
        f"weights {prediction.weights_version}"
    )
    if args.developability:
        return _write_developability(prediction, args.output)
    return 0


def developability_path(output: str) -> str:
    """Where `predict --developability` writes the profile of the model written to `output`."""
    return os.path.splitext(output)[0] + ".developability.json"


def _write_developability(prediction, output: str) -> int:
    """Print the TAP/TNP profile and write it as <output stem>.developability.json beside the model."""
    import json

    from immunofold.io import write_text_atomic
    from immunofold.sequences import InputError

    try:
        profile = prediction.developability()
    except InputError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    path = developability_path(output)
    try:
        write_text_atomic(path, json.dumps(profile.to_dict(), indent=1))
    except OSError as error:  # e.g. a folder of that name, a full disk
        print(f"error: cannot write {path}: {error.strerror or error}", file=sys.stderr)
        return 2
    print(profile)
    print(f"wrote {path}")
    return 0


def _add_predict_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-o", "--output", required=True, help="output file (.pdb or .cif)")
    parser.add_argument("--name", default=None, help="model name used in messages (default: output file stem)")
    parser.add_argument(
        "--no-refine", action="store_true",
        help="skip OpenMM refinement (much faster; keeps the network's raw geometry: some broken peptide bonds and clashes)",
    )
    from immunofold.numbering import SCHEMES

    parser.add_argument("--clean-geometry", action="store_true", help=CLEAN_GEOMETRY_HELP)
    parser.add_argument("--fast", action="store_true", help=FAST_HELP)
    parser.add_argument("--numbering", choices=SCHEMES, default="imgt", help="residue numbering (default imgt)")
    parser.add_argument("--save-ensemble", metavar="DIR", default=None, help="also write every ensemble member to DIR")
    parser.add_argument("--format", choices=("pdb", "cif"), default=None, help="output format (default: from the suffix)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--threads", type=int, default=None,
                        help="CPU threads for the model (default: torch's, every core); 1 on a machine busy with other work")
    parser.add_argument(
        "--developability", action="store_true",
        help="also print the TAP (antibody) / TNP (nanobody) developability profile and write <output stem>.developability.json",
    )


def _evaluate_problem(args: argparse.Namespace) -> str | None:
    """A one-line reason `evaluate` cannot run as asked (checked before any prediction), else None."""
    from immunofold.data.sabdab import read_summary
    from immunofold.io import prepare_output_folder

    from immunofold.prediction import check_device
    from immunofold.sequences import InputError

    if args.limit is not None and args.limit < 1:
        return f"--limit {args.limit}: give 1 or more"
    if args.fast and args.weights:
        return "--fast picks the packaged fast member set: leave out --weights"
    try:
        check_device(args.device, "--device")
    except InputError as error:
        return str(error)
    if not os.path.isdir(args.data):
        return f"--data {args.data}: {'a file, not a' if os.path.exists(args.data) else 'no such'} folder"
    splits = sorted({entry.split for entry in read_summary(args.data)})
    if not splits:
        return f"--data {args.data}: no summary.tsv under it (in sabdab/, stcrdab/ or the folder itself)"
    if args.split not in splits:
        return f"--split {args.split}: no entries with that split in {args.data} (splits: {', '.join(splits)})"
    for option, path in (("--out", args.out), ("--csv", args.csv)):
        if path is None:
            continue
        if os.path.isdir(path):
            return f"{option} {path} is a folder; give a file name such as {os.path.join(path, 'val.json')}"
        try:
            prepare_output_folder(os.path.dirname(path))
        except OSError as error:
            return f"{option}: {error}"
    return None


def _evaluate(args: argparse.Namespace) -> int:
    from immunofold.ensemble import Ensemble
    from immunofold.evaluate import evaluate, print_summary, write_results
    from immunofold.prediction import Predictor
    from immunofold.weights import WeightsError, folder_member_sets

    problem = _evaluate_problem(args)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    try:
        if args.weights and len(args.weights) == 1 and os.path.isdir(args.weights[0]):
            ensemble = Ensemble(folder_member_sets(args.weights[0]), args.device)  # its members.json, if any
        else:
            ensemble = Ensemble(args.weights, args.device) if args.weights else Ensemble.packaged(args.device, fast=args.fast)
    except WeightsError as error:  # a missing or unreadable weight file, a members.json without a kind
        print(f"error: weights: {error}", file=sys.stderr)
        return 2
    summary, rows = evaluate(args.data, args.split, Predictor(ensemble), refine=args.refine, limit=args.limit)
    csv_path = write_results(summary, rows, args.out, args.csv)
    print_summary(summary)
    print(f"wrote {args.out} and {csv_path}")
    return 0


def version_text() -> str:
    """'immunofold <package version>, weights <release>+<hash>[, fast set <release>+<hash>]': the weights versions
    predictions report (with and without --fast)."""
    from immunofold import __version__
    from immunofold.weights import packaged_member_sets, weights_version

    sets, fast = packaged_member_sets(), packaged_member_sets(fast=True)
    text = f"immunofold {__version__}, weights {weights_version(sets) if sets else 'none found'}"
    return text + (f", fast set {weights_version(fast)}" if fast else "")


class _PrintVersion(argparse.Action):
    """--version, computed only when asked (it hashes the weight files)."""

    def __init__(self, option_strings: list[str], dest: str, **kwargs):
        super().__init__(option_strings, dest, nargs=0, help="print the package and weights versions and exit")

    def __call__(self, parser, namespace, values, option_string=None):
        from immunofold.weights import WeightsError

        try:
            print(version_text())
        except WeightsError as error:
            from immunofold import __version__

            print(f"immunofold {__version__}, weights unusable: {error}")
            parser.exit(2)
        parser.exit()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="immunofold", description=__doc__)
    parser.add_argument("--version", action=_PrintVersion)
    commands = parser.add_subparsers(dest="command", required=True)

    predict = commands.add_parser("predict", help="predict one receptor structure from sequence")
    kinds = predict.add_subparsers(dest="kind", required=True)
    antibody = kinds.add_parser("antibody", help="antibody Fv: heavy + light chain")
    antibody.add_argument("--heavy", required=True, help="heavy chain sequence (VH)")
    antibody.add_argument("--light", required=True, help="light chain sequence (VL, kappa or lambda)")
    nanobody = kinds.add_parser("nanobody", help="nanobody / VHH: one heavy chain")
    nanobody.add_argument("--heavy", required=True, help="VHH sequence")
    tcr = kinds.add_parser("tcr", help="alpha/beta T-cell receptor: alpha + beta chain")
    tcr.add_argument("--alpha", required=True, help="TCR alpha chain sequence")
    tcr.add_argument("--beta", required=True, help="TCR beta chain sequence")
    for sub in (antibody, nanobody, tcr):
        _add_predict_options(sub)
        sub.set_defaults(handler=_predict)

    evaluate = commands.add_parser("evaluate", help="predict every entry of a SAbDab/STCRDab-like folder and score it")
    evaluate.add_argument("--data", required=True, help="folder with sabdab/ and/or stcrdab/ (summary.tsv + structures/)")
    evaluate.add_argument("--split", default="val", help="split column value to evaluate (default val)")
    evaluate.add_argument("--out", required=True, help="results JSON path (a per-entry CSV is written beside it)")
    evaluate.add_argument("--csv", default=None, help="per-entry CSV path (default: the JSON path with .csv)")
    evaluate.add_argument("--refine", action=argparse.BooleanOptionalAction, default=False,
                          help="score refined models (default: unrefined, --no-refine)")
    evaluate.add_argument("--weights", nargs="+", default=None,
                          help="weight files for every kind, or one folder of them (with its members.json, if any, "
                          "naming each kind's members); default: the shipped ensemble")
    evaluate.add_argument("--fast", action="store_true", help="evaluate the packaged fast member set (predict --fast)")
    evaluate.add_argument("--limit", type=int, default=None, help="evaluate only the first N entries")
    evaluate.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    evaluate.set_defaults(handler=_evaluate)

    from immunofold.batch import add_batch_parser
    from immunofold.web.server import add_serve_parser

    add_batch_parser(commands)
    add_serve_parser(commands)

    train = commands.add_parser("train", help="train (or resume training) one model from a YAML config")
    train.add_argument("--config", required=True, help="YAML training config, e.g. configs/member0.yaml")
    train.add_argument("--max-minutes", type=float, default=None, help="stop after this long; rerun to resume")
    train.add_argument("--threads", type=int, default=None, help="torch CPU threads (overrides the config)")
    train.set_defaults(handler=_train)
    return parser


def main(argv: list[str] | None = None) -> int:
    from immunofold.allocator import keep_freed_memory

    args = build_parser().parse_args(argv)
    keep_freed_memory()  # this program owns its process
    interrupted = []

    def on_interrupt(signum, frame):
        interrupted.append(signum)
        raise KeyboardInterrupt

    # Ctrl-C (SIGINT) and SIGTERM (`kill`, `timeout`, job schedulers) stop a command the same way. Not from a thread,
    # and not a signal that is ignored (SIGINT in a background job of a script, nohup): that stays ignored.
    on_main_thread = threading.current_thread() is threading.main_thread()
    previous = {number: signal.signal(number, on_interrupt) for number in (signal.SIGINT, signal.SIGTERM)
                if on_main_thread and signal.getsignal(number) is not signal.SIG_IGN}
    try:
        return args.handler(args)
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130
    except Exception as error:
        # the shipped weights, or $IMMUNOFOLD_WEIGHTS's, cannot be used (the module is loaded if the error came from it)
        weights = sys.modules.get("immunofold.weights")
        if weights is not None and isinstance(error, weights.WeightsError) and not interrupted:
            print(f"error: weights: {error}", file=sys.stderr)
            return 2
        if not interrupted:
            raise
        # Ctrl-C inside a native call that turns the KeyboardInterrupt into its own error (safetensors loading weights
        # raised ValueError): still an interruption
        print("\ninterrupted", file=sys.stderr)
        return 130
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)


if __name__ == "__main__":
    sys.exit(main())
