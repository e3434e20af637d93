"""README "Using the shards elsewhere": every python snippet of that section runs as written.

Each block marked ``<!-- snippet: NAME -->`` is executed in a fresh namespace with the working
directory laid out as the README's paths assume (``shards/synthetic``: the session's small
synthetic build; ``runs/r1/export``: a ``trainer export`` of a sin-cos checkpoint), then its
variables are checked against what our own readers decode.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from manifests import layout
from manifests.sample import decode_sample, iter_tar_samples
from manifests.schema import COLUMN_DOCS, COLUMN_NAMES

README = Path(__file__).resolve().parent.parent / "README.md"
SECTION = "## Using the shards elsewhere"
SNIPPET_RE = re.compile(r"<!-- snippet: ([\w-]+) -->\n```python\n(.*?)\n```", re.S)


def readme_snippets() -> dict[str, str]:
    """``{name: code}`` of the marked python blocks in the README section."""
    text = README.read_text()
    start = text.index(f"\n{SECTION}\n")
    end = text.find("\n## ", start + 1)
    return dict(SNIPPET_RE.findall(text[start:end if end > 0 else None]))


SNIPPETS = readme_snippets()


def run_snippet(name: str, cwd: Path, monkeypatch) -> dict:
    """Run the snippet as a script in ``cwd`` (as a user pasting it would) and return its globals."""
    import runpy

    monkeypatch.chdir(cwd)
    script = cwd / f"readme_snippet_{name}.py"
    script.write_text(SNIPPETS[name])
    return runpy.run_path(str(script), run_name=f"readme_{name}")


@pytest.fixture(scope="module")
def workdir(synthetic_build, tmp_path_factory) -> Path:
    """A directory where ``shards/synthetic`` is the session's synthetic build (24 pairs, 3 shards)."""
    out, _ = synthetic_build
    d = tmp_path_factory.mktemp("readme")
    (d / "shards").mkdir()
    (d / "shards" / "synthetic").symlink_to(out, target_is_directory=True)
    return d


def _first_sample(out: Path):
    with open(layout.tar_path(out, layout.finished_shards(str(out))[0]), "rb") as f:
        return decode_sample(*next(iter_tar_samples(f)))


def test_section_marks_every_snippet():
    assert set(SNIPPETS) == {"webdataset", "pandas", "duckdb", "timm"}
    assert all(code.strip() for code in SNIPPETS.values())


def test_webdataset_snippet_keeps_depth_in_mm_and_masks_single_channel(workdir, synthetic_build, monkeypatch):
    ns = run_snippet("webdataset", workdir, monkeypatch)
    ours = _first_sample(synthetic_build[0])
    assert ns["sample"]["__key__"] == ours.key
    image, mask, depth, kps = ns["image"], ns["mask"], ns["depth_mm"], ns["keypoints"]
    assert image.dtype == np.uint8 and image.shape == (256, 256, 3)
    assert np.abs(image.astype(int) - ours.target.astype(int)).mean() < 1.0  # PIL vs simplejpeg IDCT
    assert mask.dtype == np.uint8 and mask.shape == (256, 256) and set(np.unique(mask)) == {0, 255}
    assert np.array_equal(mask, ours.target_mask)
    assert depth.dtype == np.uint16 and np.array_equal(depth, ours.target_depth)
    on_body = depth[depth > 0]
    assert on_body.size and 1000 < on_body.min() and on_body.max() < 20000  # metres away, in mm
    assert np.array_equal((depth > 0), mask > 0)  # the rendered silhouette is where the depth is
    assert kps.shape == (17, 3) and np.array_equal(kps, np.array(ours.meta["keypoints_target"]))
    assert set(kps[:, 2]) <= {0, 1, 2}

    # what the handler prevents: webdataset's "rgb" decoder turns depth into 0/1-ish floats, masks into 3 channels
    import webdataset as wds

    plain = next(iter(wds.WebDataset(ns["urls"], shardshuffle=False).decode("rgb")))
    assert plain["target.depth.png"].dtype == np.float32 and plain["target.depth.png"].max() <= 1.0
    assert plain["target.mask.png"].shape == (256, 256, 3)


def test_pandas_snippet_and_field_descriptions(workdir, synthetic_build, monkeypatch, capsys):
    ns = run_snippet("pandas", workdir, monkeypatch)
    df = ns["df"]
    assert len(df) == 24 and set(df["kind"]) == {"cross_view", "cross_pose"}
    wide = ns["wide"]
    assert (wide["kind"] == "cross_view").all() and (wide["view_angle_deg"] > 90).all()
    assert len(wide) == ((df["kind"] == "cross_view") & (df["view_angle_deg"] > 90)).sum()
    schema = ns["schema"]
    assert schema.names == list(COLUMN_NAMES)
    for f in schema:
        assert f.metadata[b"description"].decode() == COLUMN_DOCS[f.name] != ""
    printed = capsys.readouterr().out
    assert "synthetic" in printed and COLUMN_DOCS["view_angle_deg"] in printed


def test_duckdb_snippet_selects_pairs_and_streams_only_them(workdir, synthetic_build, monkeypatch):
    ns = run_snippet("duckdb", workdir, monkeypatch)
    df = pd.read_parquet(synthetic_build[0] / "manifest")
    per_kind = ns["per_kind"]
    assert per_kind["pairs"].sum() == 24
    assert dict(zip(per_kind["kind"], per_kind["pairs"])) == df["kind"].value_counts().to_dict()
    want = df[(df["kind"] == "cross_view") & (df["view_angle_deg"] > 90)]
    assert not want.empty, "the test build should hold a wide cross-view pair"
    assert ns["keys"] == set(want["key"])
    assert ns["urls"] == sorted(f"shards/synthetic/{s}" for s in set(want["shard"]))
    streamed = list(ns["ds"])
    assert sorted(s["__key__"] for s in streamed) == sorted(want["key"])
    assert all(s["target.jpg"].dtype == np.uint8 for s in streamed)


@pytest.fixture(scope="module")
def sincos_export(workdir):
    """``trainer export`` of a (randomly initialised) sin-cos checkpoint into ``runs/r1/export``; the model."""
    import torch

    from trainer import cli
    from trainer.model import build_model

    torch.manual_seed(0)
    preset = "vitb-dec512x8-sincos"
    model = build_model(preset).eval()
    ckpt = workdir / "runs" / "r1" / "checkpoint.pt"
    ckpt.parent.mkdir(parents=True)
    torch.save({"model": model.state_dict(), "preset": preset, "step": 0}, ckpt)
    assert cli.main(["export", "--ckpt", str(ckpt), "--out", str(workdir / "runs" / "r1" / "export")]) == 0
    ckpt.unlink()  # ~450 MB: only the export is needed from here
    return model


def test_timm_snippet_matches_our_encoder(workdir, sincos_export, monkeypatch):
    import torch

    from trainer.compat_timm import import_timm

    import_timm()  # where torchvision's ops do not match torch (docs: dependencies), before the snippet's import
    ns = run_snippet("timm", workdir, monkeypatch)
    with torch.no_grad():
        ours, _ = sincos_export.encode(ns["x"])
    assert ns["meta"]["timm_model"] == "vit_base_patch16_224"
    assert ns["tokens"].shape == (1, 196, 768) and ns["pooled"].shape == (1, 768)
    torch.testing.assert_close(ns["tokens"], ours, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(ns["pooled"], ours.mean(dim=1), atol=1e-4, rtol=1e-4)
