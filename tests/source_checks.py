"""Helpers shared by the dataset-source tests: build + verify through the CLI, read what was built."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from manifests import layout
from manifests.sample import decode_sample, iter_tar_samples


def build_and_verify(source: str, root, out, *extra: str) -> None:
    """`pairgen build --source SOURCE --root ROOT --out OUT --local --quiet EXTRA...` then `pairgen verify`."""
    from pairgen.cli import main

    assert main(["build", "--source", source, "--root", str(root), "--out", str(out), "--local", "--quiet",
                 *extra]) == 0
    assert main(["verify", str(out)]) == 0


def read_samples(out) -> list:
    """Every decoded sample of a build, in shard order."""
    return [decode_sample(k, m) for tar in layout.shard_urls(Path(out)) for k, m in iter_tar_samples(str(tar))]


def read_stats(out) -> list[dict]:
    """The stats JSON of every finished shard."""
    return [json.loads(layout.stats_path(Path(out), n).read_text()) for n in layout.finished_shards(Path(out))]


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max((a | b).sum(), 1))


def console_build_and_verify(source: str, root, out, *extra: str):
    """The installed `pairgen` console script in a subprocess: `build --source SOURCE --root ROOT
    --out OUT --local --quiet EXTRA...`, then `verify OUT`; returns the build's manifest."""
    import os
    import shutil
    import subprocess
    import sys

    import pandas as pd

    exe = Path(sys.executable).with_name("pairgen")
    exe = str(exe) if exe.exists() else shutil.which("pairgen")
    env = {**os.environ, "PYOPENGL_PLATFORM": "osmesa"}
    run = subprocess.run([exe, "build", "--source", source, "--root", str(root), "--out", str(out), "--local",
                          "--quiet", *extra], capture_output=True, text=True, env=env, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    run = subprocess.run([exe, "verify", str(out)], capture_output=True, text=True, env=env, timeout=120)
    assert run.returncode == 0 and "verify OK" in run.stdout, run.stdout + run.stderr
    return pd.read_parquet(Path(out) / "manifest")


def read_manifest(out):
    """The Parquet manifests of every finished shard, concatenated."""
    import pandas as pd

    out = Path(out)
    return pd.concat([pd.read_parquet(layout.manifest_path(out, n)) for n in layout.finished_shards(out)])


def skipped_totals(out) -> dict:
    """{"skipped": reason -> count summed over shards, "skipped_units": every shard's list}."""
    skipped, units = {}, []
    for s in read_stats(out):
        for k, v in s.get("skipped", {}).items():
            skipped[k] = skipped.get(k, 0) + v
        units += s.get("skipped_units", [])
    return {"skipped": skipped, "skipped_units": units}
