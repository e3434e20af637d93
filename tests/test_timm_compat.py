"""timm in the venv (the torchvision start-up hook) and the RoPE encoder's export to timm's EVA."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
import torch

import _crocoman_torchvision as hook
from trainer import cli
from trainer.compat_timm import import_timm
from trainer.export import rope_qk_permutation, timm_target, timm_vit_state_dict
from trainer.model import build_model

ROOT = Path(__file__).resolve().parents[1]
needs_timm = pytest.mark.skipif(importlib.util.find_spec("timm") is None, reason="timm is not installed")


def _python(code: str, *flags: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *flags, "-c", code], capture_output=True, text=True, cwd=cwd,
                          timeout=120)


# --------------------------------------------------------------------------- item 1: plain import timm


@needs_timm
def test_plain_import_timm_and_torchvision_in_a_fresh_interpreter(tmp_path):
    """What a user types, after tools/setup.sh (which writes the .pth hook into the venv). The hook
    costs nothing at start-up: a finder on sys.meta_path, neither torch nor our packages imported."""
    proc = _python("import sys; "
                   "start = sorted(m for m in ('torch', 'torchvision', 'trainer') if m in sys.modules); "
                   "import timm; import torchvision; print(timm.__version__, start)", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split() == [importlib.import_module("timm").__version__, "[]"]


def _isolated(site_dir: Path, code: str, with_project: bool = True, cwd: Path = ROOT):
    """``python -S`` (none of the environment's .pth files run), with the environment's packages and
    the project on sys.path when ``with_project``; then the .pth files of ``site_dir`` are processed
    (as at start-up), then ``code`` runs."""
    setup = "import sys, site; "
    if with_project:
        setup += f"sys.path.append({sysconfig.get_paths()['purelib']!r}); sys.path.insert(0, {str(ROOT)!r}); "
    return _python(setup + f"site.addsitedir({str(site_dir)!r}); " + code, "-S", cwd=cwd)


@needs_timm
def test_pth_line_hooks_the_first_torchvision_import_then_steps_aside(tmp_path):
    pth = hook.write_pth(tmp_path)
    assert pth.read_text() == hook.PTH_LINE + "\n"
    proc = _isolated(tmp_path, (
        "import _crocoman_torchvision as h; "
        "before = (h.TorchvisionFinder in sys.meta_path, 'torch' in sys.modules); "
        "import torchvision; "
        "print(before, h.TorchvisionFinder in sys.meta_path)"))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "(True, False) False"


def test_pth_line_is_silent_when_the_project_is_not_importable(tmp_path):
    hook.write_pth(tmp_path)
    proc = _isolated(tmp_path, "print('_crocoman_torchvision' in sys.modules, "
                               "'TorchvisionFinder' in [getattr(f, '__name__', '') for f in sys.meta_path])",
                     with_project=False, cwd=tmp_path)
    assert proc.returncode == 0 and proc.stderr == ""
    assert proc.stdout.strip() == "False False"


def test_hook_defines_nothing_where_torchvision_ops_exist(tmp_path):
    """Stand-in for a machine whose torchvision extension loads (matching build): the ops are there
    before the hook runs, and it then leaves them alone."""
    proc = _isolated(tmp_path, (
        "import torch; lib = torch.library.Library('torchvision', 'DEF'); "
        "lib.define('nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor'); "
        "import _crocoman_torchvision as h; h.install(); "
        "import importlib.util; importlib.util.find_spec('torchvision'); "
        "print(h._LIBRARY is None, h.TorchvisionFinder in sys.meta_path)"))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "True False"


def test_hook_defines_the_missing_schemas_once():
    """In this process (CPU torch, CUDA torchvision, or no torchvision): afterwards the ops exist."""
    hook.ensure_torchvision_ops()
    first = hook._LIBRARY
    hook.ensure_torchvision_ops()
    assert hook._LIBRARY is first
    assert hasattr(torch.ops.torchvision, "nms") and hasattr(torch.ops.torchvision, "qnms")


# --------------------------------------------------------------------------- item 3: RoPE -> timm EVA


def test_rope_qk_permutation_is_a_permutation_pairing_the_same_frequencies():
    p = rope_qk_permutation(64)
    assert sorted(p.tolist()) == list(range(64))
    # timm interleaved pair (2j, 2j+1) of its x half (first) = our x-half pair (32+j, 48+j)
    assert p[:4].tolist() == [32, 48, 33, 49]
    assert p[32:36].tolist() == [0, 16, 1, 17]


def _timm_tokens(timm, name: str, kwargs: dict, state: dict, x: torch.Tensor):
    vit = timm.create_model(name, pretrained=False, **kwargs).eval()
    vit.load_state_dict(state, strict=True)
    with torch.no_grad():
        return vit.forward_features(x), vit(x)


@needs_timm
def test_rope_export_loads_strictly_into_timm_eva_with_equal_tokens(tmp_path):
    """``trainer export`` of a RoPE (tiny) checkpoint: timm_vit.safetensors + its metadata rebuild our encoder."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    timm = import_timm()
    torch.manual_seed(0)
    ours = build_model("tiny").eval()
    ckpt = tmp_path / "tiny.pth"
    torch.save({"model": ours.state_dict()}, ckpt)
    assert cli.main(["export", "--ckpt", str(ckpt), "--out", str(tmp_path / "exp"), "--model", "tiny"]) == 0
    path = tmp_path / "exp" / "timm_vit.safetensors"
    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
    assert meta["timm_model"] == "vit_base_patch16_rope_224" and meta["preset"] == "tiny"
    x = torch.randn(2, 3, 224, 224)
    feats, pooled = _timm_tokens(timm, meta["timm_model"], json.loads(meta["timm_kwargs"]), load_file(path), x)
    with torch.no_grad():
        tokens, _ = ours.encode(x)
    assert (feats - tokens).abs().max().item() < 1e-4
    assert (pooled - tokens.mean(dim=1)).abs().max().item() < 1e-4
    # the permutation is what makes it exact: the same weights without it give other tokens
    unpermuted = {k: v for k, v in timm_vit_state_dict(ours).items()}
    for k, v in ours.state_dict().items():
        if k.startswith("enc_blocks.") and ".attn.qkv." in k:
            unpermuted["blocks." + k.removeprefix("enc_blocks.")] = v
    wrong, _ = _timm_tokens(timm, meta["timm_model"], json.loads(meta["timm_kwargs"]), unpermuted, x)
    assert (wrong - tokens).abs().max().item() > 1e-2


@needs_timm
def test_default_preset_exports_to_timm_vit_base_rope():
    """The default preset (CroCo v2 ViT-B encoder, RoPE100) against timm's registered RoPE-axial ViT-B."""
    timm = import_timm()
    torch.manual_seed(0)
    ours = build_model("vitb-dec512x8", enc_depth=2, dec_depth=1).eval()  # ViT-B width and heads; 2 blocks
    name, kwargs = timm_target(ours)
    assert name == "vit_base_patch16_rope_224" and kwargs["depth"] == 2
    x = torch.randn(2, 3, 224, 224)
    feats, pooled = _timm_tokens(timm, name, kwargs, timm_vit_state_dict(ours), x)
    with torch.no_grad():
        tokens, _ = ours.encode(x)
    assert (feats - tokens).abs().max().item() < 1e-4
    assert (pooled - tokens.mean(dim=1)).abs().max().item() < 1e-4
