"""Configuration: model presets and the dataclasses behind every CLI flag.

Each dataclass field is one flag (``batch_size`` -> ``--batch-size``); its default and help text
live next to it (``field(metadata={"help": ...})``) and ``add_arguments`` maps them 1:1 onto
argparse, so the resolved config saved in the run directory reads like the command line.
"""

from __future__ import annotations

import argparse
import dataclasses
import typing
from dataclasses import dataclass, field


class TrainerError(Exception):
    """A user-facing error: the CLI prints its message on one line and exits with status 2."""


SKIP_LIMIT = 1000
"""Default ``--skip-limit``: a training stream stops with an error once this many samples in a row
were skipped (corrupt, incomplete) or shards in a row gave no sample (empty, unreadable, gone).
Each data-loader worker counts its own stream; one usable pair resets the count. The resampled
training stream is endless, so without this bound data that never decodes would hang the run."""


# --------------------------------------------------------------------------- model presets


@dataclass(frozen=True)
class ModelConfig:
    """Architecture of a CroCo model (constructor arguments, same names as CroCo's ``croco_kwargs``)."""

    enc_embed_dim: int = 768
    enc_depth: int = 12
    enc_num_heads: int = 12
    dec_embed_dim: int = 512
    dec_depth: int = 8
    dec_num_heads: int = 16
    pos_embed: str = "RoPE100"  # "RoPE100" (CroCo v2) or "cosine" (fixed 2D sin-cos, CroCo v1)
    img_size: int = 224
    patch_size: int = 16
    mlp_ratio: float = 4.0
    blr: float = 1.5e-4  # base learning rate this preset trains with (lr = blr * batch / 256)

    @property
    def num_patches(self) -> int:
        return (self.img_size // self.patch_size) ** 2


PRESETS: dict[str, ModelConfig] = {
    # CroCo_V2_ViTBase_SmallDecoder.pth (347 keys): the default.
    "vitb-dec512x8": ModelConfig(),
    # CroCo_V2_ViTBase_BaseDecoder.pth (443 keys).
    "vitb-dec768x12": ModelConfig(dec_embed_dim=768, dec_depth=12, dec_num_heads=12),
    # CroCo_V2_ViTLarge_BaseDecoder.pth (587 keys).
    "vitl-dec768x12": ModelConfig(enc_embed_dim=1024, enc_depth=24, enc_num_heads=16,
                                  dec_embed_dim=768, dec_depth=12, dec_num_heads=12),
    # CroCo.pth, CroCo v1 (349 keys): sin-cos positional embeddings.
    "vitb-dec512x8-sincos": ModelConfig(pos_embed="cosine"),
    # For tests and CPU smoke runs; a higher base lr so a few dozen steps visibly learn.
    "tiny": ModelConfig(enc_embed_dim=64, enc_depth=2, enc_num_heads=4,
                        dec_embed_dim=32, dec_depth=2, dec_num_heads=4, blr=0.05),
}
DEFAULT_PRESET = "vitb-dec512x8"


def get_preset(name: str) -> ModelConfig:
    """The preset called ``name`` (TrainerError listing the known ones otherwise)."""
    if name not in PRESETS:
        raise TrainerError(f"unknown model preset {name!r}; choose one of {', '.join(PRESETS)}")
    return PRESETS[name]


# --------------------------------------------------------------------------- run configs


def _f(default, help: str, **kw):
    return field(default=default, metadata={"help": help, **kw})


@dataclass
class PretrainConfig:
    """``trainer pretrain``: every field is a flag."""

    # data
    shards: str = _f("", "build directory (finished shards + manifests), local or an fsspec URL "
                         "(s3://bucket/prefix), tar paths / URLs / brace patterns separated by '::', "
                         "or pipe: URLs", required=True)
    out: str = _f("", "run directory (config, metrics, TensorBoard, checkpoints, images)", required=True)
    mix: str = _f("", "mixing weights, e.g. 'aist=1,synthetic=0.5,cross_pose=2': sources/kinds named get "
                      "that share of pairs (unnamed ones are dropped); needs manifests (default: none, "
                      "pairs in the proportions the shards hold)")
    storage_option: list[str] = field(default_factory=list, metadata={
        "help": "KEY=VALUE option of the fsspec filesystem of remote --shards (repeatable; e.g. "
                "endpoint_url=http://host:9000, anon=true, client_kwargs.region_name=eu-west-1); "
                "credentials otherwise come from the environment (AWS_ACCESS_KEY_ID, ...)",
        "metavar": "KEY=VALUE"})
    shuffle_buffer: int = _f(1000, "samples in each worker's shuffle buffer")
    workers: int = _f(4, "data loader worker processes per rank (0 = load in the main process)")
    data_split: str = _f("resample", "'resample': every rank and worker draws shards at random, independently; "
                                     "'rank': each epoch splits the shards over ranks x workers (pairs disjoint "
                                     "across ranks within an epoch, the same batch count on every rank; needs "
                                     "manifests)", choices=("resample", "rank"))
    color_jitter: float = _f(0.4, "brightness/contrast/saturation factors drawn in [1-s, 1+s], "
                                  "independently per image (CroCo: 0.4); 0 disables")
    skip_limit: int = _f(SKIP_LIMIT, "stop with an error when this many samples in a row were skipped (corrupt or "
                               "incomplete) or shards in a row gave no sample, counted per data-loader "
                               "worker (0 = never stop)")
    # model
    model: str = _f(DEFAULT_PRESET, f"model preset: {', '.join(PRESETS)}")
    init: str = _f("random", "'random' or a CroCo checkpoint (ckpt['model']) / one of our checkpoints, "
                             "loaded strictly into the preset")
    # masking and loss
    masking: str = _f("human", "'human' (human-centric, paper 3.1) or 'uniform' (CroCo)", choices=("human", "uniform"))
    mask_ratio: float = _f(0.75, "fraction masked: of the human patches ('human') or of all patches ('uniform')")
    human_threshold: float = _f(0.0, "a patch is human when more than this fraction of its pixels is person")
    norm_pix_loss: bool = _f(True, "per-patch normalised pixel targets (CroCo)")
    loss_patches: str = _f("masked", "patches the pixel loss counts: 'masked' (every masked patch, as CroCo) or "
                                     "'human' (only the masked patches that hold the person: the --human-threshold "
                                     "flags of the human-centric masking); see docs/evaluation.md",
                           choices=("masked", "human"))
    kp_loss_weight: float = _f(0.0, "weight of the keypoint-heatmap loss on the reference (0 = off)")
    kp_sigma: float = _f(8.0, "Gaussian sigma of keypoint heatmaps, in pixels")
    # optimisation
    steps: int = _f(100_000, "optimizer steps in the whole run")
    batch_size: int = _f(64, "pairs per step per process")
    blr: float | None = _f(None, "base learning rate, lr = blr * global batch / 256 (default: the preset's: "
                                 "1.5e-4, tiny 0.05)")
    min_lr: float = _f(0.0, "learning rate at the end of the cosine")
    warmup_steps: int | None = _f(None, "linear warm-up steps from 0 (default: 10%% of --steps)")
    weight_decay: float = _f(0.05, "AdamW weight decay (not on norms, biases, mask token)")
    beta1: float = _f(0.9, "AdamW beta1")
    beta2: float = _f(0.95, "AdamW beta2")
    clip_grad: float = _f(0.0, "clip the gradient norm to this value (0 = no clipping)")
    # runtime
    device: str = _f("auto", "'auto' (cuda:LOCAL_RANK if available, else cpu), 'cpu' or 'cuda'")
    precision: str = _f("auto", "'auto' (bf16 autocast on GPU, fp32 on CPU), 'bf16' or 'fp32'",
                        choices=("auto", "bf16", "fp32"))
    compile: bool = _f(False, "torch.compile the model")
    seed: int = _f(0, "seed of parameters, data order, augmentation and masks")
    resume: bool = _f(True, "resume from OUT/checkpoint.pt when it exists")
    log_every: int = _f(10, "steps between metric lines (JSONL + TensorBoard)")
    ckpt_every: int = _f(1000, "steps between checkpoints (one is always written at the end)")
    image_every: int = _f(1000, "steps between reconstruction PNGs (also at the first and last step)")
    stop_at: int | None = _f(None, "stop (after a checkpoint) at this step, e.g. for time-sliced jobs; "
                                   "the schedule still follows --steps")

    def validate(self) -> None:
        """Raise TrainerError on values that cannot work."""
        get_preset(self.model)
        if not self.shards:
            raise TrainerError("--shards is required")
        if not self.out:
            raise TrainerError("--out is required")
        if self.batch_size <= 0:
            raise TrainerError(f"--batch-size must be positive, got {self.batch_size}")
        if self.steps <= 0:
            raise TrainerError(f"--steps must be positive, got {self.steps}")
        if not 0.0 <= self.mask_ratio < 1.0:
            raise TrainerError(f"--mask-ratio must be in [0, 1), got {self.mask_ratio}")
        if self.workers < 0 or self.shuffle_buffer < 0 or self.skip_limit < 0:
            raise TrainerError("--workers, --shuffle-buffer and --skip-limit must be >= 0")
        for name in ("log_every", "ckpt_every", "image_every"):
            if getattr(self, name) <= 0:
                raise TrainerError(f"--{name.replace('_', '-')} must be positive")


@dataclass
class EvalConfig:
    """``trainer eval``: masked-reconstruction loss per kind, with and without the reference."""

    ckpt: str = _f("", "checkpoint of a run (or a CroCo checkpoint with --model)", required=True)
    shards: str = _f("", "shards to evaluate (same forms as pretrain --shards)", required=True)
    storage_option: list[str] = field(default_factory=list, metadata={
        "help": "KEY=VALUE option of the fsspec filesystem of remote --shards (repeatable, as for pretrain)",
        "metavar": "KEY=VALUE"})
    model: str = _f("", "preset, when the checkpoint does not name one (CroCo checkpoints)")
    batch_size: int = _f(32, "pairs per batch")
    workers: int = _f(2, "data loader workers")
    max_batches: int = _f(0, "stop after this many batches (0 = one full pass)")
    masking: str = _f("", "override the run's masking ('human' / 'uniform')")
    mask_ratio: float | None = _f(None, "override the run's mask ratio")
    seed: int = _f(0, "seed of the masks (the same masks are used with and without the reference)")
    device: str = _f("auto", "'auto', 'cpu' or 'cuda'")
    json_out: str = _f("", "also write the results to this JSON file")

    def validate(self) -> None:
        if self.batch_size <= 0:
            raise TrainerError(f"--batch-size must be positive, got {self.batch_size}")


PROBE_TASKS = ("keypoints", "silhouette", "depth")


@dataclass
class ProbeConfig:
    """``trainer probe``: a small head trained on the frozen (or fine-tuned) encoder, on the labels
    the shards carry; the metrics on held-out shards (see docs/evaluation.md)."""

    ckpt: str = _f("", "checkpoint to probe: a run's checkpoint.pt, a CroCo release (with --model if it "
                       "names no preset), or 'random' (weights drawn from --seed)", required=True)
    shards: str = _f("", "labelled training shards (same forms as pretrain --shards)", required=True)
    val_shards: str = _f("", "held-out shards the metrics are computed on (no shard in common with --shards)",
                         required=True)
    task: str = _f("keypoints", "keypoints: COCO-17 heatmaps, PCK@0.05/0.1; silhouette: person mask, IoU; "
                                "depth: relative depth on person pixels, AbsRel (needs depth maps: synthetic)",
                   choices=PROBE_TASKS)
    storage_option: list[str] = field(default_factory=list, metadata={
        "help": "KEY=VALUE option of the fsspec filesystem of remote shards (repeatable, as for pretrain)",
        "metavar": "KEY=VALUE"})
    model: str = _f("", f"preset for 'random' (default {DEFAULT_PRESET}) or a checkpoint that names none")
    labels: int = _f(0, "train the head on this many labelled samples of --shards, drawn by --seed (0 = all)")
    val_samples: int = _f(1000, "evaluate on the first this many labelled samples of --val-shards in shard "
                                "order, the same for every checkpoint and seed (0 = all)")
    binocular: bool = _f(False, "predict from the pre-trained decoder's tokens: encoder + decoder with the "
                                "reference image, the whole target visible")
    finetune: bool = _f(False, "train the encoder too (and the decoder with --binocular), layer-wise lr decay")
    layer_decay: float = _f(0.75, "--finetune: lr of layer l = lr * layer_decay ** (layers - l)")
    steps: int = _f(1000, "optimizer steps of the head")
    batch_size: int = _f(32, "samples per step")
    lr: float = _f(1e-3, "peak learning rate (AdamW, 5%% linear warm-up, cosine to 0)")
    weight_decay: float = _f(1e-4, "AdamW weight decay (not on norms and biases)")
    kp_sigma: float = _f(4.0, "keypoints: Gaussian sigma of the target heatmaps, in pixels")
    min_visibility: int = _f(1, "keypoints: joints with COCO visibility >= this are trained and scored "
                                "(1: labelled, occluded included; 2: visible only)", choices=(1, 2))
    seed: int = _f(0, "seed of the label draw, the head's initial weights, the batch order (and of the "
                      "weights of 'random')")
    device: str = _f("auto", "'auto' (cuda if available), 'cpu' or 'cuda'")
    precision: str = _f("auto", "'auto' (bf16 autocast on GPU, fp32 on CPU), 'bf16' or 'fp32'",
                        choices=("auto", "bf16", "fp32"))
    json_out: str = _f("", "also write the results (metrics and provenance) to this JSON file")
    tensorboard: str = _f("", "write TensorBoard events (training loss, final metrics) to this directory")

    def validate(self) -> None:
        if self.task not in PROBE_TASKS:
            raise TrainerError(f"--task must be one of {', '.join(PROBE_TASKS)}, got {self.task!r}")
        if not self.ckpt:
            raise TrainerError("--ckpt is required (a checkpoint file or 'random')")
        if not self.shards or not self.val_shards:
            raise TrainerError("--shards and --val-shards are both required")
        if self.labels < 0 or self.val_samples < 0:
            raise TrainerError("--labels and --val-samples must be >= 0")
        if self.steps <= 0 or self.batch_size <= 0:
            raise TrainerError("--steps and --batch-size must be positive")
        if self.lr <= 0 or not 0 < self.layer_decay <= 1:
            raise TrainerError("--lr must be positive and --layer-decay in (0, 1]")
        if self.kp_sigma <= 0:
            raise TrainerError(f"--kp-sigma must be positive, got {self.kp_sigma}")
        if self.min_visibility not in (1, 2):
            raise TrainerError(f"--min-visibility must be 1 or 2, got {self.min_visibility}")
        if self.model:
            get_preset(self.model)


@dataclass
class ExportConfig:
    """``trainer export``: the encoder as safetensors (+ a timm ViT state dict for sin-cos models)."""

    ckpt: str = _f("", "checkpoint of a run (or a CroCo checkpoint with --model)", required=True)
    out: str = _f("", "output directory", required=True)
    model: str = _f("", "preset, when the checkpoint does not name one (CroCo checkpoints)")


# --------------------------------------------------------------------------- argparse mapping


def add_arguments(parser: argparse.ArgumentParser, cls: type) -> None:
    """One ``--flag`` per dataclass field of ``cls`` (bools get ``--x/--no-x``)."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        flag = "--" + f.name.replace("_", "-")
        typ = hints[f.name]
        meta = dict(f.metadata)
        help_text = meta.pop("help", "")
        required = meta.pop("required", False)
        if typing.get_origin(typ) is list:  # repeatable flag: one value per use
            parser.add_argument(flag, action="append", type=typing.get_args(typ)[0], default=None,
                                help=help_text, **meta)
            continue
        args = typing.get_args(typ)
        if args:  # Optional[X]
            typ = next(a for a in args if a is not type(None))
        if not required:
            help_text = _with_default(help_text, f.default)
        if typ is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=f.default, help=help_text)
        else:
            parser.add_argument(flag, type=typ, default=f.default, required=required, help=help_text, **meta)


def _with_default(help_text: str, default) -> str:
    """``help_text`` with `` (default: X)`` appended once: not when the text already says its
    default in words, nor for an empty default (None, ""), which the text explains when it matters."""
    if "(default" in help_text or default is None or default == "":
        return help_text
    return f"{help_text} (default: %(default)s)"


def from_namespace(cls: type, ns: argparse.Namespace):
    """Build ``cls`` from the parsed flags of ``add_arguments``."""
    values = {f.name: getattr(ns, f.name) for f in dataclasses.fields(cls)}
    for f in dataclasses.fields(cls):  # a repeatable flag never given: its default (empty list)
        if values[f.name] is None and f.default_factory is not dataclasses.MISSING:
            values[f.name] = f.default_factory()
    return cls(**values)


# --------------------------------------------------------------------------- recording a config

SECRET_WORDS = ("secret", "token", "password", "key")
"""A storage option whose key contains one of these words has its value recorded as ``***``."""


def _redact(value, key: str = ""):
    if any(w in key.lower() for w in SECRET_WORDS):
        return "***"
    if isinstance(value, dict):
        return {k: _redact(v, str(k)) for k, v in value.items()}
    if isinstance(value, list):
        return [_redact(v) for v in value]
    if isinstance(value, str) and "://" in value and "@" in value.split("://", 1)[1].split("/", 1)[0]:
        scheme, rest = value.split("://", 1)  # a URL with user:password@ in it
        return f"{scheme}://***@{rest.split('@', 1)[1]}"
    return value


def redact_storage_options(items: list[str]) -> list[str]:
    """``--storage-option`` items as recorded in a run's config: values of secret-looking keys (and
    secrets nested in JSON values or URLs) replaced by ``***``."""
    import json

    out = []
    for item in items or ():
        key, sep, value = str(item).partition("=")
        if not sep:
            out.append(item)
            continue
        try:
            parsed = json.loads(value)
        except ValueError:
            parsed = value
        red = _redact(parsed, key)
        out.append(f"{key}={red if isinstance(red, str) else json.dumps(red)}")
    return out


def recorded(cfg) -> dict:
    """``dataclasses.asdict(cfg)`` without secrets: what config.json and checkpoints keep."""
    d = dataclasses.asdict(cfg)
    if isinstance(d.get("shards"), str):  # a URL may carry user:password@
        d["shards"] = "::".join(_redact(part) for part in d["shards"].split("::"))
    if "storage_option" in d:
        d["storage_option"] = redact_storage_options(d["storage_option"])
    return d
