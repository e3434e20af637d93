"""Compare checkpoints with ``trainer probe``: one table, mean and spread over seeds, noise flagged.

    python tools/compare_runs.py --ckpt random --ckpt pre=runs/r1/checkpoint.pt --task keypoints \\
        --shards TRAIN --val-shards VAL --labels 500 --seeds 0,1,2 --out-dir probes/ [probe flags ...]
    python tools/compare_runs.py --results probes/ [--baseline random]   # tabulate JSON results already written

Each (checkpoint, seed) is probed once into ``OUT_DIR/<name>-<task>-seed<S>.json`` (a result
already there with the same settings is reused, so an interrupted comparison resumes); flags this
script does not know (``--steps``, ``--model``, ``--binocular``, ...) go to every ``trainer probe``
run unchanged. Every checkpoint is probed with the same seeds on the same held-out samples.

Spread = max - min over the seeds. A difference of means smaller than the larger spread of the two
runs compared is shown as "within noise": with 3 seeds the spread is a rough, not a strict, bound.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

METRICS = {"keypoints": ("pck@0.05", "pck@0.1"), "silhouette": ("iou",), "depth": ("abs_rel",)}
LOWER_IS_BETTER = {"abs_rel"}


def _name(spec: str) -> tuple[str, str]:
    """``NAME=PATH`` or ``PATH`` -> (name, path); a path's name is its run directory's."""
    if "=" in spec:
        name, path = spec.split("=", 1)
        return name, path
    if spec == "random":
        return "random", spec
    p = Path(spec)
    return (p.parent.name or p.stem) if p.name == "checkpoint.pt" else p.stem, spec


def run_all(ckpts: list[str], seeds: list[int], task: str, shards: str, val_shards: str, labels: int,
            out_dir: Path, extra: list[str]) -> list[Path]:
    """Probe every (checkpoint, seed) that has no result yet; returns the result files."""
    from trainer.cli import build_parser
    from trainer.config import from_namespace
    from trainer.probe import format_results, run_probe

    parser = build_parser()
    out_dir.mkdir(parents=True, exist_ok=True)
    files = []
    for spec in ckpts:
        name, path = _name(spec)
        for seed in seeds:
            out = out_dir / f"{name}-{task}-seed{seed}.json"
            argv = ["probe", "--ckpt", path, "--task", task, "--shards", shards, "--val-shards", val_shards,
                    "--labels", str(labels), "--seed", str(seed), *extra]
            args, unknown = parser.parse_known_args(argv)
            if unknown:
                parser.commands["probe"].error(f"unrecognized arguments: {' '.join(unknown)}")
            cfg = from_namespace(args.config_cls, args)
            files.append(out)
            if out.exists():
                try:
                    done = json.loads(out.read_text())
                except ValueError:
                    done = None
                if done and done.get("config") == _recorded(cfg):
                    print(f"{out}: already done", flush=True)
                    continue
            results = run_probe(cfg)
            results["name"] = name
            out.write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
            print(format_results(results), flush=True)
    return files


def _recorded(cfg) -> dict:
    from trainer.config import recorded

    return json.loads(json.dumps(recorded(cfg)))


def load_results(paths: list[Path]) -> list[dict]:
    """Probe results from JSON files and directories of them."""
    found = []
    for p in paths:
        files = sorted(p.glob("*.json")) if p.is_dir() else [p]
        for f in files:
            r = json.loads(f.read_text())
            if isinstance(r, dict) and "metrics" in r and "checkpoint" in r:
                r.setdefault("name", _name(r["checkpoint"]["path"])[0])
                found.append(r)
    return found


def summarise(results: list[dict]) -> dict:
    """``{group: {name: {"seeds", "val_keys", metric: {"mean", "std", "min", "max", "spread", "values"}}}}``;
    a group is one (task, labels, finetune, binocular) setting, names keep their first-seen order."""
    import numpy as np

    groups: dict = {}
    for r in results:
        g = (r["task"], r["labels"], r["finetune"], r["binocular"])
        entry = groups.setdefault(g, {}).setdefault(r["name"], {"seeds": [], "val_keys": [], "runs": []})
        entry["seeds"].append(r["seed"])
        entry["val_keys"].append(tuple(r["val"]["keys"]))
        entry["runs"].append(r["metrics"])
    for g, names in groups.items():
        for entry in names.values():
            for m in METRICS[g[0]]:
                vals = np.array([run[m] for run in entry["runs"] if run.get(m) is not None], dtype=float)
                if vals.size:
                    entry[m] = {"mean": float(vals.mean()), "std": float(vals.std(ddof=1)) if vals.size > 1 else 0.0,
                                "min": float(vals.min()), "max": float(vals.max()),
                                "spread": float(vals.max() - vals.min()), "values": vals.tolist()}
    return groups


def format_table(groups: dict, baseline: str | None = None) -> str:
    """One table per setting; each checkpoint against ``baseline`` (default: the first one listed)."""
    lines = []
    for (task, labels, finetune, binocular), names in groups.items():
        mode = ("fine-tuned" if finetune else "frozen") + (", binocular" if binocular else "")
        lines.append(f"task {task}, labels {labels or 'all'}, {mode}")
        val_sets = {k for e in names.values() for k in e["val_keys"]}
        if len(val_sets) > 1:
            lines.append("  WARNING: the runs were scored on different held-out samples: not comparable")
        metrics = METRICS[task]
        lines.append((f"  {'checkpoint':<16}{'seeds':<9}"
                      + "".join(f"{m + ' mean ± std [min, max]':<36}" for m in metrics)).rstrip())
        base_name = baseline if baseline in names else next(iter(names))
        base = names[base_name]
        for name, e in names.items():
            row = f"  {name:<16}{','.join(map(str, sorted(e['seeds']))):<9}"
            for m in metrics:
                s = e.get(m)
                row += (f"{s['mean']:.4f} ± {s['std']:.4f} [{s['min']:.4f}, {s['max']:.4f}]" if s else "n/a").ljust(36)
            lines.append(row.rstrip())
        for name, e in names.items():
            if name == base_name:
                continue
            parts = []
            for m in metrics:
                a, b = base.get(m), e.get(m)
                if not (a and b):
                    continue
                diff = b["mean"] - a["mean"]
                noise = max(a["spread"], b["spread"])
                better = (diff < 0) if m in LOWER_IS_BETTER else (diff > 0)
                verdict = "within noise" if abs(diff) < noise else ("better" if better else "worse")
                parts.append(f"{m} {diff:+.4f} ({verdict}; spread {noise:.4f})")
            lines.append(f"  {name} vs {base_name}: " + "; ".join(parts))
        lines.append("")
    return "\n".join(lines).rstrip()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--results", nargs="+", type=Path, help="tabulate these JSON files / directories (no probing)")
    p.add_argument("--ckpt", action="append", default=[], help="checkpoint to probe, NAME=PATH or PATH or 'random' "
                                                                 "(repeatable; the first is the baseline)")
    p.add_argument("--task", default="keypoints", choices=tuple(METRICS))
    p.add_argument("--shards", help="labelled training shards")
    p.add_argument("--val-shards", help="held-out shards")
    p.add_argument("--labels", type=int, default=500, help="labelled training samples per run [%(default)s]")
    p.add_argument("--seeds", default="0,1,2", help="comma list of seeds [%(default)s]")
    p.add_argument("--out-dir", type=Path, default=Path("probes"), help="result JSON files [%(default)s]")
    p.add_argument("--baseline", help="checkpoint name the others are compared with [the first --ckpt]")
    p.add_argument("--json-out", type=Path, help="also write the summary here")
    args, extra = p.parse_known_args(argv)
    from trainer.config import TrainerError

    try:
        if args.results:
            if args.ckpt or extra:
                p.error("--results only tabulates: no --ckpt or probe flags with it")
            results = load_results(args.results)
        else:
            if not args.ckpt or not args.shards or not args.val_shards:
                p.error("give --ckpt (one or more), --shards and --val-shards, or --results")
            try:
                seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
            except ValueError:
                p.error(f"--seeds takes a comma list of integers, got {args.seeds!r}")
            files = run_all(args.ckpt, seeds, args.task, args.shards, args.val_shards, args.labels,
                            args.out_dir, extra)
            results = load_results(files)
    except TrainerError as exc:
        print(f"compare_runs: error: {exc}", file=sys.stderr)
        return 2
    if not results:
        print("compare_runs: error: no probe results found", file=sys.stderr)
        return 2
    groups = summarise(results)
    baseline = args.baseline or (_name(args.ckpt[0])[0] if args.ckpt else None)
    print(format_table(groups, baseline))
    if args.json_out:
        args.json_out.write_text(json.dumps(
            [{"task": g[0], "labels": g[1], "finetune": g[2], "binocular": g[3],
              "checkpoints": {n: {k: v for k, v in e.items() if k not in ("val_keys", "runs")}
                              for n, e in names.items()}}
             for g, names in groups.items()], indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
