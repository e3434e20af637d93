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
