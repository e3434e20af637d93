"""Settings a source would ignore are refused before anything is written: every source declares the
``--reader-option`` keys it reads (``option_help``), and the synthetic source takes none of the
real-source settings (its silhouettes are exact)."""

from __future__ import annotations

import pytest

from pairgen.sources import REGISTRY, source_class

# what each source reads from --reader-option (the readers' own parsing is tested in test_source_<name>.py)
ACCEPTED = {"synthetic": set(), "aist": set(), "humbi": set(), "3dpw": set(), "posetrack": {"fps"},
            "interhand": {"fps", "min_hand_joints", "index_dir"}, "mars": {"fps", "person_width"},
            "pennaction": {"fps", "joint_order", "bbox"},
            "jrdb": {"fps", "views", "val", "max_occlusion", "allow_truncated", "occluded_joints", "pose_frame_offset"}}


def _build(tmp_path, capsys, *args: str) -> tuple[int, str]:
    from pairgen.cli import main

    out = tmp_path / "out"
    rc = main(["build", "--out", str(out), "--local", "--quiet", "--num-pairs", "1", *args])
    err = capsys.readouterr().err
    assert not out.exists(), "a refused build wrote something"
    return rc, err


def test_every_source_declares_its_options():
    assert set(ACCEPTED) == set(REGISTRY)
    for name in REGISTRY:
        help_ = source_class(name).option_help
        assert set(help_) == ACCEPTED[name], name
        assert all(isinstance(h, str) and h and "\n" not in h for h in help_.values()), name


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_unknown_reader_option_is_refused(name, tmp_path, capsys):
    """Regression: every source but pennaction and jrdb ignored a misspelt --reader-option."""
    root = () if name == "synthetic" else ("--root", str(tmp_path))
    rc, err = _build(tmp_path, capsys, "--source", name, *root, "--reader-option", "fsp=30")
    accepted = ", ".join(sorted(ACCEPTED[name]))
    what = f"accepted: {accepted}" if accepted else "it accepts none"
    assert rc == 2 and err == f"pairgen: error: --source {name}: unknown --reader-option fsp ({what})\n", err


def test_reader_option_given_twice_is_refused(tmp_path, capsys):
    rc, err = _build(tmp_path, capsys, "--source", "posetrack", "--root", str(tmp_path),
                     "--reader-option", "fps=25", "--reader-option", "fps=30")
    assert rc == 2 and "--reader-option fps given more than once" in err, err


def test_generic_settings_are_not_reader_options(tmp_path, capsys):
    """--split / --annotations ... are flags; as reader options they silently overrode the flags."""
    rc, err = _build(tmp_path, capsys, "--source", "pennaction", "--root", str(tmp_path),
                     "--reader-option", "split=test")
    assert rc == 2 and "unknown --reader-option split (accepted: bbox, fps, joint_order)" in err, err


@pytest.mark.parametrize("args, flag", [
    (("--silhouette", "box"), "--silhouette"),
    (("--root", "."), "--root"),
    (("--split", "val"), "--split"),
    (("--annotations", "."), "--annotations"),
    (("--crop-margin", "0.5"), "--crop-margin"),
    (("--min-person-px", "10"), "--min-person-px"),
])
def test_synthetic_refuses_real_source_settings(args, flag, tmp_path, capsys):
    """Regression: the synthetic source ignored --silhouette (its silhouettes are exact renders),
    --root, --split (every synthetic pair is "train") and the other real-source settings."""
    rc, err = _build(tmp_path, capsys, "--source", "synthetic", *args)
    assert rc == 2 and err.startswith(f"pairgen: error: --source synthetic does not take {flag} "), err
    assert err.count("\n") == 1


def test_synthetic_refuses_reader_options(tmp_path, capsys):
    rc, err = _build(tmp_path, capsys, "--source", "synthetic", "--reader-option", "fps=30")
    assert rc == 2 and "--source synthetic: unknown --reader-option fps (it accepts none)" in err, err


def test_synthetic_pairs_are_accounted(synthetic_build):
    """The shard-stats invariant holds for the synthetic source too: a discarded draw is a dropped
    part (metrics.dropped "redrawn: ..."), not a skipped pair."""
    from source_checks import check_accounting

    out, cfg = synthetic_build
    totals = check_accounting(out)
    assert totals["planned"] == totals["built"] == cfg.num_pairs and not totals["skipped"], totals
