"""Help texts and human messages: pairgen's positional/option help, trainer defaults shown once,
the build summary's wording of redraws, labelled reconstruction grids."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch

from pairgen import cli as pairgen_cli
from pairgen.stats import accounting_lines
from trainer import cli as trainer_cli
from trainer.visualize import COLUMNS, label_band, reconstruction_grid, write_png


def _pairgen_help(argv: list[str], capsys) -> str:
    with pytest.raises(SystemExit) as exit_info:
        pairgen_cli.main(argv)
    assert exit_info.value.code == 0
    return capsys.readouterr().out


@pytest.mark.parametrize("command", ["verify", "stats", "preview"])
def test_pairgen_dir_positional_has_help(command, capsys):
    text = _pairgen_help([command, "-h"], capsys)
    entry = re.search(r"^  dir +(.+)$", text, re.M)
    assert entry and "pairgen output directory" in entry.group(1)


def test_pairgen_jpeg_quality_has_help(capsys):
    text = " ".join(_pairgen_help(["build", "-h"], capsys).split())
    assert "--jpeg-quality JPEG_QUALITY JPEG quality (1-100) of the target and reference images" in text
    assert "[95]" in text


def _entries(help_text: str) -> dict[str, str]:
    """``{first option string: its whole help entry, whitespace collapsed}`` from argparse's help."""
    body = help_text.split("options:", 1)[1]
    out = {}
    for chunk in re.split(r"\n(?=  -)", body):
        chunk = " ".join(chunk.split())
        if chunk.startswith("-"):
            out[chunk.split()[0].rstrip(",")] = chunk
    return out


@pytest.mark.parametrize("command", ["pretrain", "eval", "export"])
def test_trainer_help_shows_each_default_once(command):
    text = trainer_cli.build_parser().commands[command].format_help()
    entries = _entries(text)
    assert len(entries) > 2
    for flag, entry in entries.items():
        assert entry.count("(default") <= 1, entry
        assert "(default: None)" not in entry and "(default: )" not in entry, entry
    if command == "pretrain":
        assert entries["--blr"].endswith("(default: the preset's: 1.5e-4, tiny 0.05)")
        assert entries["--warmup-steps"].endswith("(default: 10% of --steps)")
        assert entries["--mix"].endswith("(default: none, pairs in the proportions the shards hold)")
        assert entries["--steps"].endswith("(default: 100000)")
        assert entries["--compile"].endswith("(default: False)")
        assert entries["--data-split"].endswith("(default: resample)")
        assert "(default" not in entries["--stop-at"]  # None: the text says what happens without it
        assert "(default" not in entries["--shards"]  # required


def test_accounting_lines_tell_redraws_from_lost_pairs():
    lines = accounting_lines({"no usable draw": 1}, {"redrawn: poses too similar": 7, "camera c05 not synchronised": 1})
    assert lines == ["skipped pairs (planned, not built): no usable draw: 1",
                     "redrawn (draws discarded and drawn again: not lost pairs): poses too similar: 7",
                     "dropped parts (not pairs): camera c05 not synchronised: 1"]
    assert accounting_lines({}, {"redrawn: poses too similar": 2}) == [
        "redrawn (draws discarded and drawn again: not lost pairs): poses too similar: 2"]
    assert accounting_lines({}, {}) == []


def test_build_summary_lists_redraws_apart_from_lost_pairs(tmp_path, capsys):
    """A real synthetic build whose cross-pose gap is too short for any pose change: every draw of
    its one pair is redrawn ("poses too similar") and the pair is finally lost ("no usable draw")."""
    out = tmp_path / "out"
    rc = pairgen_cli.main(["build", "--source", "synthetic", "--out", str(out), "--num-pairs", "1",
                           "--shard-size", "1", "--kinds", "cross_pose", "--min-gap-s", "0.001",
                           "--max-gap-s", "0.001", "--local", "--quiet"])
    assert rc == 0
    printed = capsys.readouterr().out.splitlines()
    assert "skipped pairs (planned, not built): no usable draw: 1" in printed
    assert "redrawn (draws discarded and drawn again: not lost pairs): poses too similar: 8" in printed
    assert not any(line.startswith("skipped: ") or "skipped pairs" in line and "redrawn" in line for line in printed)
    stats = json.loads(next((out / "stats").glob("*.json")).read_text())  # the stats keep their meaning
    assert stats["skipped"] == {"no usable draw": 1}
    assert stats["metrics"]["dropped"] == {"redrawn: poses too similar": 8}
    assert pairgen_cli.main(["stats", str(out)]) == 0
    text = capsys.readouterr().out
    assert "redrawn (draws discarded and drawn again: not lost pairs): poses too similar: 8" in text


def test_reconstruction_png_has_column_labels(tmp_path):
    torch.manual_seed(0)
    b, size, patch = 4, 64, 16
    n = (size // patch) ** 2
    target, reference = torch.randn(b, 3, size, size), torch.randn(b, 3, size, size)
    pred, masked = torch.randn(b, n, patch * patch * 3), torch.rand(b, n) > 0.5
    grid = reconstruction_grid(target, reference, pred, masked, patch, norm_pix=True)
    band = label_band(size)
    assert grid.shape == (band.shape[0] + b * size, 4 * size, 3) and band.shape[0] >= 12
    assert np.array_equal(grid[:band.shape[0]], band)
    for col in range(len(COLUMNS)):  # every column has dark text on the white band
        part = band[:, col * size:(col + 1) * size].min(axis=2)
        assert (part < 100).sum() > 20 and (part == 255).mean() > 0.5, col
    png = tmp_path / "grid.png"
    write_png(png, grid)
    import cv2

    assert np.array_equal(cv2.imread(str(png))[..., ::-1], grid)
    wide = label_band(224)  # full-size columns get a bigger font
    assert wide.shape == (24, 4 * 224, 3) and (wide.min(axis=2) < 100).sum() > (band.min(axis=2) < 100).sum()
