"""Copy the best weights of training runs into the package (src/immunofold/weights/) and document them.

Usage: python scripts/ship_weights.py --release v0.7 --configs configs runs/v0.7/pair-r1b ...
       [--kind-members tcr=data-r3,pair-r1b,pass2-d6,pass2-probe]
       python scripts/ship_weights.py --fast-set --release v0.8-fast --configs configs runs/v1.0/fast-r1 runs/v1.0/fast-r1b
       --kind-members tcr=data-r3,pair-r1b,pass2-d6,pass2-probe

With --fast-set the runs are added beside the shipped members as the fast member set (members-fast.json, which
--kind-members may fill with members already shipped); nothing is removed and the README's table rows for the new
members are printed, to be added to weights/README.md by hand.

Each member's safetensors file keeps its metadata (the config as run, epoch, val metrics, wall time,
hardware, commit) and gains the release name; weights/README.md gets one row per member and each
member's config is saved beside its weights as <member>.yaml, so `immunofold train --config <member>.yaml`
reproduces it. weights/members.json says which members predict each receptor kind: those --kind-members names for
a kind (in that order), every member (in the order given) for the others. With --configs, that file is the committed config in that folder whose `name:` is the member's
(for runs made elsewhere, e.g. on a GPU with paths of that machine); otherwise the config as run.
"""

import argparse
import json
import os

import yaml
from safetensors.torch import load_file, save_file
from safetensors import safe_open

from immunofold.constants import KINDS
from immunofold.weights import FAST_MEMBERS_FILE, MEMBERS_FILE

WEIGHTS_DIR = os.path.join(os.path.dirname(__file__), "..", "src", "immunofold", "weights")


def committed_config(folder: str, name: str) -> str:
    """Text of the YAML file in `folder` whose `name:` is `name` (configs/member0.yaml holds pair-r1b)."""
    for entry in sorted(os.listdir(folder)):
        if entry.endswith(".yaml"):
            with open(os.path.join(folder, entry)) as handle:
                text = handle.read()
            if (yaml.safe_load(text) or {}).get("name") == name:
                return text
    raise SystemExit(f"error: no config named {name} in {folder}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--release", required=True, help="release name written into every member, e.g. v0.1")
    parser.add_argument("--notes", default="", help="free text for the README (how the members were trained)")
    parser.add_argument("--configs", help="folder of the committed configs (found by their `name:`) to ship beside the weights")
    parser.add_argument("--kind-members", action="append", default=[], metavar="KIND=NAME,NAME",
                        help="the members (run names) that predict one receptor kind; repeat per kind (default: all)")
    parser.add_argument("--fast-set", action="store_true", help="add the runs as the fast member set (see above)")
    parser.add_argument("runs", nargs="+", help="run folders holding best.safetensors")
    args = parser.parse_args()
    kind_members = dict(option.split("=", 1) for option in args.kind_members)
    unknown = set(kind_members) - set(KINDS)
    if unknown:
        raise SystemExit(f"error: --kind-members: unknown kind {', '.join(sorted(unknown))} ({', '.join(KINDS)})")
    os.makedirs(WEIGHTS_DIR, exist_ok=True)
    shipped = {n[: -len(".safetensors")] for n in os.listdir(WEIGHTS_DIR) if n.endswith(".safetensors")}
    for old in [] if args.fast_set else os.listdir(WEIGHTS_DIR):
        if old.endswith((".safetensors", ".yaml")) or old == MEMBERS_FILE:
            os.remove(os.path.join(WEIGHTS_DIR, old))
    infos = []
    for run in args.runs:
        with safe_open(os.path.join(run, "best.safetensors"), framework="pt") as handle:
            infos.append(json.loads(handle.metadata()["info"]))
    names = [info["config"]["name"] for info in infos]
    sets = {kind: kind_members[kind].split(",") if kind in kind_members else names for kind in KINDS}
    missing = {member for members in sets.values() for member in members} - set(names) - (shipped if args.fast_set else set())
    if missing:
        raise SystemExit(f"error: --kind-members names {', '.join(sorted(missing))}, not among the runs given")
    with open(os.path.join(WEIGHTS_DIR, FAST_MEMBERS_FILE if args.fast_set else MEMBERS_FILE), "w") as handle:
        json.dump({kind: [f"{member}.safetensors" for member in members] for kind, members in sets.items()}, handle, indent=1)
    rows = []
    for run, info, name in zip(args.runs, infos, names):
        info["release"] = args.release
        source = os.path.join(run, "best.safetensors")
        save_file(load_file(source), os.path.join(WEIGHTS_DIR, f"{name}.safetensors"), metadata={"info": json.dumps(info)})
        with open(os.path.join(WEIGHTS_DIR, f"{name}.yaml"), "w") as handle:
            if args.configs:
                handle.write(committed_config(args.configs, name))
            else:
                yaml.safe_dump(info["config"], handle, sort_keys=False)
        val = info["val"]
        predicts = ", ".join(kind for kind in KINDS if name in sets[kind])
        rows.append(
            f"| {name} | {predicts} | {info['config']['seed']} | {info['epoch']} | {info['train_seconds'] / 60:.0f} min | "
            f"{info['device']} | {info.get('train_examples', '?')} | {val['antibody']['H3']:.2f} / {val['antibody']['Hfr']:.2f} | "
            f"{val['nanobody']['H3']:.2f} | {val['tcr']['A3']:.2f} / {val['tcr']['B3']:.2f} | {info.get('commit', 'unknown')[:12]} |"
        )
    if args.fast_set:
        print("\n".join(rows))
        return
    size = sum(os.path.getsize(os.path.join(WEIGHTS_DIR, n)) for n in os.listdir(WEIGHTS_DIR) if n.endswith(".safetensors"))
    readme = f"""# Shipped weights: release {args.release}

{len(rows)} ensemble members, {size / 1e6:.1f} MB in total (safetensors). Each file's metadata holds its full
config, the epoch kept, its val metrics, training wall time, hardware and the commit of the training code;
`<member>.yaml` is the config (reproduce a member with `immunofold train --config <member>.yaml`, then
`python scripts/ship_weights.py --release NAME --configs configs runs/NAME/<member> ...`; the shipped members'
configs are configs/member*.yaml). `members.json` names the members that predict each receptor kind.

Data: ../shared/data (SAbDab/STCRDab-like), **train split** (antibody, nanobody and TCR entries released
before 2021, and for members trained since session 15 the structures its updates 2 and 3 added; see its README),
plus its aux heavy-chain backbones where a member's config names `aux_kinds` (records of train or val PDB ids
left out; since session 7 also records >= 95 % identical to, or sharing the CDR3 of, a val entry). Model selection
used the val split (recent entries; never trained on).
Val columns: mean RMSD (Å) on the val split, ImmuneBuilder convention (backbone N, CA, C, CB; each chain
superposed on its own framework; IMGT CDRs), single member, unrefined, at the kept epoch.

{args.notes}

| member | predicts | seed | epoch | train time | hardware | train examples | val Ab H3 / Hfr | val Nb H3 | val TCR A3 / B3 | commit |
|---|---|---|---|---|---|---|---|---|---|---|
""" + "\n".join(rows) + "\n"
    with open(os.path.join(WEIGHTS_DIR, "README.md"), "w") as handle:
        handle.write(readme)
    print(readme)


if __name__ == "__main__":
    main()
