"""Outputs a user inspects (issue 13, item 8): null view angles of cross-pose pairs, self-describing
Parquet fields, provenance in ``trainer eval --json-out``, and file permissions that follow the umask."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest

from manifests import layout
from manifests.sample import decode_sample, iter_tar_samples
from manifests.schema import COLUMN_DOCS, COLUMN_NAMES, DESCRIPTION, rows_to_table
from pairgen.preview import caption, preview
from pairgen.stats import stats


# -- (a) no second camera, no angle: null, not 0 ---------------------------------------------------

def test_cross_pose_pairs_record_no_view_angle(synthetic_build):
    out, _ = synthetic_build
    df = pd.read_parquet(out / "manifest")
    cv, cp = df[df.kind == "cross_view"], df[df.kind == "cross_pose"]
    assert len(cv) and len(cp)
    assert cp["view_angle_deg"].isna().all() and cp["azimuth_gap_deg"].isna().all()
    assert cv["view_angle_deg"].notna().all() and (cv["view_angle_deg"] > 0).all()
    for tar in sorted(out.glob("*.tar")):
        for key, members in iter_tar_samples(tar):
            meta = decode_sample(key, members).meta
            if meta["kind"] == "cross_pose":
                assert meta["view_angle_deg"] is None and meta["azimuth_gap_deg"] is None
            else:
                assert meta["view_angle_deg"] > 0
    report = stats(str(out))
    assert f"cross-view view angle (deg):   n={len(cv)} " in report and "uncalibrated" not in report


def test_stats_and_preview_handle_null_cross_view_angles(synthetic_build, tmp_path):
    """Uncalibrated cameras (e.g. JRDB) give cross-view pairs without an angle: counted, never shown as 0."""
    out = tmp_path / "copy"
    shutil.copytree(synthetic_build[0], out)
    name = layout.finished_shards(str(out))[0]
    path = out / layout.manifest_rel(name)
    rows = pq.read_table(path).to_pylist()
    nulled = 0
    for row in rows:
        if row["kind"] == "cross_view":
            row["view_angle_deg"] = row["azimuth_gap_deg"] = None
            nulled += 1
    assert nulled
    pq.write_table(rows_to_table(rows), path)
    assert f"({nulled} uncalibrated: null)" in stats(str(out), plot=str(tmp_path / "stats.png"))
    assert (tmp_path / "stats.png").stat().st_size > 0
    assert preview(str(out), str(tmp_path / "sheet.png"), num=8) == 8

    assert caption({"source": "jrdb", "kind": "cross_view", "view_angle_deg": None,
                    "azimuth_gap_deg": None}) == "jrdb cross_view: view ?deg az ?"
    assert caption({"source": "aist", "kind": "cross_view", "view_angle_deg": 0.4,
                    "azimuth_gap_deg": 12.6}) == "aist cross_view: view 0deg az 13"
    assert caption({"source": "synthetic", "kind": "cross_pose", "view_angle_deg": None,
                    "time_gap_s": 0.5}) == "synthetic cross_pose: pose gap 0.50s"


# -- (b) every Parquet field says what it holds ----------------------------------------------------

def test_manifest_and_plan_fields_carry_descriptions(synthetic_build):
    out, cfg = synthetic_build
    manifests = sorted((out / "manifest").glob("*.parquet"))
    assert manifests
    for path in manifests:
        schema = pq.read_schema(path)
        assert schema.names == list(COLUMN_NAMES)
        for field in schema:
            assert field.metadata[DESCRIPTION].decode() == COLUMN_DOCS[field.name]
            assert COLUMN_DOCS[field.name].strip()
    plan = pq.read_schema(out / layout.plan_tasks_rel(cfg.source))
    assert all(f.metadata and f.metadata.get(DESCRIPTION, b"").strip() for f in plan)


def test_manifest_bytes_do_not_depend_on_when_they_are_written(synthetic_build, tmp_path):
    """The descriptions are fixed bytes in the schema: the same rows always give the same file."""
    rows = pq.read_table(next((synthetic_build[0] / "manifest").glob("*.parquet"))).to_pylist()
    written = []
    for i in range(2):
        pq.write_table(rows_to_table(rows), tmp_path / f"{i}.parquet", compression="zstd")
        written.append((tmp_path / f"{i}.parquet").read_bytes())
    assert written[0] == written[1]


# -- (c) trainer eval --json-out says what was evaluated -------------------------------------------

def test_eval_json_records_provenance(tmp_path, capsys):
    import torch

    from trainer import cli
    from trainer.checkpoint import save_atomic
    from trainer.model import build_model
    from trainer_shards import build_shards

    shards = build_shards(tmp_path / "shards", n_shards=1, per_shard=8)
    ck = tmp_path / "run" / "checkpoint.pt"
    torch.manual_seed(0)
    save_atomic({"model": build_model("tiny").state_dict(), "preset": "tiny", "step": 7}, ck)
    out = tmp_path / "eval.json"
    assert cli.main(["eval", "--ckpt", str(ck), "--shards", str(shards), "--workers", "0", "--batch-size", "4",
                     "--masking", "uniform", "--mask-ratio", "0.5", "--seed", "3", "--json-out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "all" in printed and "provenance" not in printed
    res = json.loads(out.read_text())
    assert res["all"]["pairs"] == 8
    st = ck.stat()
    assert res["provenance"] == {
        "checkpoint": {"path": str(ck.absolute()), "bytes": st.st_size, "mtime": st.st_mtime,
                       "sha256": hashlib.sha256(ck.read_bytes()).hexdigest()},
        "step": 7, "preset": "tiny", "shards": str(shards),
        "shard_urls": [str(layout.tar_path(shards, n)) for n in layout.finished_shards(str(shards))],
        "masking": "uniform", "mask_ratio": 0.5, "human_threshold": 0.0, "norm_pix_loss": True, "seed": 3,
        "batch_size": 4, "max_batches": 0, "device": "cpu",
    }


# -- (d) checkpoints and exports get the permissions of any new file (0666 less the umask) ---------

@pytest.mark.parametrize("umask", [0o022, 0o027], ids=["umask022", "umask027"])
def test_checkpoint_and_export_follow_the_umask(tmp_path, umask):
    import torch

    from trainer.checkpoint import save_atomic
    from trainer.config import ExportConfig
    from trainer.export import export
    from trainer.model import build_model

    torch.manual_seed(0)
    ck = tmp_path / "run" / "checkpoint.pt"
    old = os.umask(umask)
    try:
        save_atomic({"model": build_model("tiny").state_dict(), "preset": "tiny"}, ck)
        paths = export(ExportConfig(ckpt=str(ck), out=str(tmp_path / "export")))
        assert os.umask(umask) == umask  # export read the umask and put it back
    finally:
        os.umask(old)
    assert "encoder.safetensors" in [p.name for p in paths]
    for p in (ck, *paths):
        assert stat.S_IMODE(Path(p).stat().st_mode) == 0o666 & ~umask, p
