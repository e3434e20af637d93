"""``trainer pretrain``: the training loop, top to bottom.

One process on CPU or one GPU; several GPUs / nodes through ``torchrun`` (DDP, one process per
GPU, NCCL; gloo on CPU). Every rank streams its own resampled shards (``--data-split rank``: its
share of each epoch); rank 0 logs and writes checkpoints. Re-running the same command resumes from ``OUT/checkpoint.pt``.

Faults: rank 0 holds ``OUT/.lock`` (a second trainer on the same run directory is refused); a
checkpoint is written atomically (a save killed midway leaves the previous one, and the next run
removes the partial file); a run directory that stops accepting writes stops the run with one
line (after a last checkpoint when that still works); SIGTERM / SIGINT finish the current step,
write a checkpoint and exit with 128 + the signal number (a second signal acts as usual).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import signal
import sys
import threading
import time
from pathlib import Path

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from manifests.layout import write_json_atomic

from . import checkpoint as ckpt_io
from .config import PretrainConfig, TrainerError, get_preset, recorded
from .data import (STATE_KEYS, PairStream, RankSplit, check_batch, find_usable_pair, make_loader, mix_plan,
                   resolve_shards, storage_options, stream_config, to_model_input)
from .model import CroCoMan
from .objective import Pretrainer
from .visualize import reconstruction_grid, write_png


def lr_factor(step: int, warmup: int, total: int, min_ratio: float) -> float:
    """Linear warm-up from 0 over ``warmup`` steps, then half-cycle cosine down to ``min_ratio``."""
    if step < warmup:
        return step / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def param_groups(module: torch.nn.Module, weight_decay: float) -> list[dict]:
    """AdamW groups: weight decay on matrices, none on norms, biases and the mask token."""
    decay, no_decay = [], []
    for name, p in module.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim <= 1 or name.endswith(".bias") or "mask_token" in name else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def resolve_device(spec: str, local_rank: int) -> torch.device:
    if spec == "auto":
        return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    if spec == "cuda":
        if not torch.cuda.is_available():
            raise TrainerError("--device cuda but no GPU is available")
        return torch.device(f"cuda:{local_rank}")
    if spec == "cpu":
        return torch.device("cpu")
    raise TrainerError(f"--device must be auto, cpu or cuda, got {spec!r}")


class StopRequest:
    """While active (main thread only): the first SIGTERM / SIGINT is recorded in ``signum`` and the
    previous handlers are put back, so a second signal acts as usual (kills / KeyboardInterrupt)."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self):
        self.signum: int | None = None
        self._previous: dict = {}

    def install(self) -> "StopRequest":
        if threading.current_thread() is threading.main_thread():
            self._previous = {sig: signal.signal(sig, self._handle) for sig in self.SIGNALS}
        return self

    def _handle(self, signum, frame) -> None:
        self.signum = signum
        self.uninstall()

    def uninstall(self) -> None:
        for sig, prev in self._previous.items():
            signal.signal(sig, prev if prev is not None else signal.SIG_DFL)
        self._previous = {}


class RunDirError(Exception):
    """A write into the run directory failed (``what``: which file, ``exc``: the OSError)."""

    def __init__(self, what: str, exc: OSError):
        super().__init__(what)
        self.what, self.exc = what, exc

    def describe(self) -> str:
        return f"cannot write {self.what}: {' '.join(str(self.exc).split())}"


def _write(what: str, fn, *args, **kwargs):
    """``fn(*args, **kwargs)``, turning an OSError into RunDirError(what)."""
    try:
        return fn(*args, **kwargs)
    except OSError as exc:
        raise RunDirError(what, exc) from exc


def train(cfg: PretrainConfig) -> dict:
    """Run (or resume) pre-training; returns a summary (final step, last logged loss, run dir, and
    ``stopped``: the signal number when SIGTERM / SIGINT stopped it early)."""
    cfg.validate()
    mcfg = get_preset(cfg.model)
    init_ckpt = ckpt_io.load_file(cfg.init) if cfg.init != "random" else None  # a bad --init fails first

    # --- distributed setup (torchrun sets WORLD_SIZE / RANK / LOCAL_RANK) -------------------
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(cfg.device, local_rank)
    distributed = world > 1
    if distributed and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    if device.type == "cuda":
        torch.cuda.set_device(device)
        torch.backends.cuda.matmul.allow_tf32 = True  # TF32 for any fp32 matmul left outside autocast
        torch.backends.cudnn.allow_tf32 = True
    main = rank == 0
    log = (lambda msg: print(msg, flush=True)) if main else (lambda msg: None)
    use_bf16 = cfg.precision == "bf16" or (cfg.precision == "auto" and device.type == "cuda")
    out = Path(cfg.out)
    ckpt_path = out / "checkpoint.pt"

    # --- data: shards, mixing, the stream (built after resume, which sets its state) ---------
    shards = resolve_shards(cfg.shards, storage_options(cfg.storage_option))
    find_usable_pair(shards, stream_config(cfg, mcfg), cfg.skip_limit)  # refused only if no pair is usable
    mix = mix_plan(shards, cfg.mix)
    split = None  # --data-split rank: each epoch's shards split over the ranks and workers
    if cfg.data_split == "rank":
        split = RankSplit(shards, mix, cfg.batch_size)
        split.check(cfg.seed, world * max(1, cfg.workers))

    # --- model, optimizer, schedule ---------------------------------------------------------
    torch.manual_seed(cfg.seed)  # same initial weights on every rank
    model = CroCoMan(mcfg)
    if init_ckpt is not None:
        ckpt_io.load_weights(model, init_ckpt, cfg.model, source=cfg.init)
        del init_ckpt
    net = Pretrainer(model, cfg.norm_pix_loss, cfg.kp_loss_weight, cfg.kp_sigma).to(device)
    blr = cfg.blr if cfg.blr is not None else mcfg.blr
    lr = blr * cfg.batch_size * world / 256
    warmup = cfg.warmup_steps if cfg.warmup_steps is not None else cfg.steps // 10
    optimizer = torch.optim.AdamW(param_groups(net, cfg.weight_decay), lr=lr, betas=(cfg.beta1, cfg.beta2),
                                  fused=device.type == "cuda")
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, warmup, cfg.steps, cfg.min_lr / lr if lr > 0 else 0.0))

    # --- resume from the latest checkpoint of this run --------------------------------------
    step, data_state, worker_offset, seed_shift = 0, {}, 0, 0
    num_workers = max(1, cfg.workers)
    run_lock = None  # held until train() returns (the OS drops it when the process ends)
    if main:  # one trainer per run directory; then drop what a save killed midway left behind
        run_lock = ckpt_io.lock_run_dir(out)
        for partial in ckpt_io.remove_partials(ckpt_path):
            log(f"trainer: warning: removed {partial.name}, a partial checkpoint left by an interrupted save"
                f"{'; resuming from ' + ckpt_path.name if ckpt_path.exists() else ''}")
    if ckpt_path.exists():
        if not cfg.resume:
            raise TrainerError(f"{ckpt_path} exists; use another --out or drop --no-resume to continue it")
        try:
            ck = ckpt_io.load_file(ckpt_path)
        except TrainerError as exc:
            raise TrainerError(f"cannot resume: {exc} (the trainer only renames complete checkpoints into place, "
                               "so this file was damaged or replaced; move it away to start the run over)") from exc
        missing = [k for k in ("preset", "step", "optimizer", "scheduler", "rng") if k not in ck]
        if missing:
            raise TrainerError(f"cannot resume: {ckpt_path} is not the checkpoint of a trainer run (no "
                               f"{', '.join(missing)}); to start from its weights, move it away and pass it as --init")
        if ck.get("preset") != cfg.model:
            raise TrainerError(f"{ckpt_path} is a {ck.get('preset')} run, not --model {cfg.model}")
        ckpt_io.load_weights(model, ck, cfg.model, source=str(ckpt_path))
        if net.kp_head is not None:
            if ck.get("kp_head") is None:
                raise TrainerError(f"{ckpt_path} was trained without the keypoint loss; keep --kp-loss-weight 0")
            net.kp_head.load_state_dict(ck["kp_head"])
        optimizer.load_state_dict(ck["optimizer"])
        scheduler.load_state_dict(ck["scheduler"])
        ckpt_io.set_rng_state(ck["rng"])
        step = int(ck["step"])
        if step >= cfg.steps:
            log(f"{out} already finished ({step} steps)")
            return {"step": step, "out": str(out), "loss": None}
        saved = ck.get("data", {})
        if (saved.get("world") == world and saved.get("workers") == num_workers and saved.get("batch_size") == cfg.batch_size
                and saved.get("split", "resample") == cfg.data_split):
            data_state, worker_offset = saved["ranks"][rank], step % num_workers
        else:  # the stream cannot be replayed: draw a fresh one rather than repeat the first batches
            log("trainer: warning: world size, --workers, --batch-size or --data-split changed; the data stream "
                "restarts with a new seed")
            seed_shift = step
        log(f"resuming {out} at step {step}")

    stream_cfg = stream_config(cfg, mcfg)
    stream_cfg.seed += seed_shift
    stream = PairStream(shards, stream_cfg, rank, world, mix, data_state, worker_offset, verbose=main, split=split)
    loader = make_loader(stream, cfg.workers, pin_memory=device.type == "cuda")

    # --- DDP and compile ---------------------------------------------------------------------
    train_net: torch.nn.Module = net
    if distributed:
        train_net = DistributedDataParallel(net, device_ids=[device.index] if device.type == "cuda" else None)
    if cfg.compile:
        train_net = torch.compile(train_net)

    # --- run directory: resolved config, metrics, TensorBoard (rank 0) ----------------------
    writer = None
    if main:
        resolved = {"config": recorded(cfg), "model": dataclasses.asdict(mcfg), "lr": lr, "blr": blr,
                    "warmup_steps": warmup, "world_size": world, "global_batch": cfg.batch_size * world,
                    "device": str(device), "bf16": use_bf16, "shards": len(shards.urls),
                    "pairs": shards.num_pairs, "torch": torch.__version__}
        from torch.utils.tensorboard import SummaryWriter

        try:
            write_json_atomic(out / "config.json", resolved)
            _truncate_metrics(out / "metrics.jsonl", step)
            # TensorBoard hides (on reading) the events of steps >= purge_step logged before this
            # run: the tail a killed run logged after its checkpoint. Step ``step`` itself was logged
            # with the checkpoint (and is kept in metrics.jsonl), so the purge starts after it.
            writer = SummaryWriter(str(out / "tb"), purge_step=step + 1)
        except OSError as exc:
            raise TrainerError(f"cannot write to the run directory {out}: {' '.join(str(exc).split())}") from exc
        log(f"training {cfg.model} for {cfg.steps} steps: global batch {cfg.batch_size * world}, lr {lr:.3g}, "
            f"{device}{' bf16' if use_bf16 else ''}, {len(shards.urls)} shards -> {out}")

    on_disk: list[int | None] = [step or None]  # step of the checkpoint on disk (None: none yet)

    def save_checkpoint() -> None:
        """All ranks contribute their data state; rank 0 writes atomically."""
        state = {"ranks": [data_state], "world": world, "workers": num_workers, "batch_size": cfg.batch_size,
                 "split": cfg.data_split}
        if distributed:
            gathered = [None] * world
            dist.all_gather_object(gathered, data_state)
            state["ranks"] = gathered
        if main:
            _write(str(ckpt_path), ckpt_io.save_atomic, {
                "model": model.state_dict(), "croco_kwargs": ckpt_io.croco_kwargs(mcfg), "preset": cfg.model,
                "kp_head": net.kp_head.state_dict() if net.kp_head is not None else None,
                "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "step": step,
                "rng": ckpt_io.rng_state(), "data": state, "config": recorded(cfg),
            }, ckpt_path)
        on_disk[0] = step

    def check_finite() -> None:
        """Stop (on every rank) if any loss since the last check was NaN/Inf; the checkpoint on disk stays good."""
        flag = bad.clone()
        if distributed:
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        if flag.item():
            raise TrainerError(f"loss became NaN/Inf before step {step}; stopped. The last good checkpoint "
                               f"({ckpt_path}) is kept; lower --blr or set --clip-grad")

    def write_failed(err: RunDirError) -> TrainerError:
        """The error to stop with after a failed write; first a last checkpoint if that may still work
        (one process only: in DDP the other ranks are stopped by torchrun when this one exits)."""
        msg = f"{err.describe()}; stopped at step {step}"
        if not distributed and err.what != str(ckpt_path) and on_disk[0] != step:
            try:
                check_finite()
                save_checkpoint()
                return TrainerError(f"{msg}, after writing {ckpt_path}")
            except (RunDirError, TrainerError):
                pass
        kept = f"the last checkpoint ({ckpt_path}, step {on_disk[0]}) is kept" if on_disk[0] else "no checkpoint was written"
        return TrainerError(f"{msg}; {kept}")

    # --- train ---------------------------------------------------------------------------------
    last_step = min(cfg.steps, cfg.stop_at or cfg.steps)
    bad = torch.zeros((), dtype=torch.bool, device=device)
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    window_steps, window_corrupt, data_time, t0 = 0, 0, 0.0, time.perf_counter()
    last_loss = None
    train_net.train()
    batches = iter(loader)
    stopped: int | None = None  # the signal that stops the run early
    stop = StopRequest().install()
    try:
        while step < last_step:
            t_wait = time.perf_counter()
            try:
                batch = check_batch(next(batches))
            except Exception:
                if stop.signum is None or distributed:
                    raise
                stopped = stop.signum
                break  # the loader died with the signal (Ctrl-C / SIGTERM sent to the process group)
            data_time += time.perf_counter() - t_wait
            data_state[batch["worker"]] = {k: batch[k] for k in STATE_KEYS if k in batch}
            window_corrupt += batch["corrupt"]
            target = to_model_input(batch["target"].to(device, non_blocking=True), batch["jitter"][:, 0])
            reference = to_model_input(batch["reference"].to(device, non_blocking=True), batch["jitter"][:, 1])
            visible = batch["visible"].to(device, non_blocking=True)
            masked = batch["masked"].to(device, non_blocking=True)
            kp = batch["kp"].to(device, non_blocking=True)

            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16):
                outputs = train_net(target, reference, visible, masked, kp)
            loss = outputs["loss"]
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            log_now = (step + 1) % cfg.log_every == 0 or step + 1 == last_step
            grad_norm = None
            if cfg.clip_grad > 0:
                grad_norm = torch.nn.utils.clip_grad_norm_(net.parameters(), cfg.clip_grad)
            elif log_now:
                grad_norm = torch.nn.utils.get_total_norm([p.grad for p in net.parameters() if p.grad is not None])
            optimizer.step()
            scheduler.step()
            step += 1
            bad |= ~torch.isfinite(loss.detach())
            loss_sum += loss.detach().double()
            window_steps += 1

            if not distributed:
                stopped = stop.signum
            if log_now:  # --- metrics (loss averaged over the window and the ranks)
                check_finite()
                stats = torch.stack([loss_sum, torch.tensor(float(window_corrupt), dtype=torch.float64, device=device)])
                if distributed:
                    dist.all_reduce(stats)
                    # a signal on any rank stops all of them, at the same step (DDP: only at log steps)
                    flag = torch.tensor(float(stop.signum or 0), device=device)
                    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
                    stopped = int(flag.item()) or None
                elapsed = time.perf_counter() - t0
                last_loss = stats[0].item() / (window_steps * world)
                record = {"step": step, "loss": last_loss, "lr": optimizer.param_groups[0]["lr"],
                          "grad_norm": float(grad_norm), "pairs_per_s": window_steps * cfg.batch_size * world / elapsed,
                          "data_wait": data_time / elapsed, "corrupt_skipped": int(stats[1].item()),
                          "visible_patches": int(visible.shape[1])}
                if "kp_loss" in outputs:
                    record["kp_loss"] = outputs["kp_loss"].item()
                if main:
                    _write(str(out / "metrics.jsonl"), _append_line, out / "metrics.jsonl", json.dumps(record))
                    for k, v in record.items():
                        if k != "step":
                            _write(str(out / "tb"), writer.add_scalar, f"train/{k}", v, step)
                    log(f"step {step}/{cfg.steps} loss {last_loss:.4f} lr {record['lr']:.3g} "
                        f"grad {record['grad_norm']:.3g} {record['pairs_per_s']:.1f} pairs/s")
                loss_sum.zero_()
                window_steps, window_corrupt, data_time, t0 = 0, 0, 0.0, time.perf_counter()

            if main and (step == 1 or step % cfg.image_every == 0 or step == last_step):  # --- reconstructions
                hidden = batch["hidden"].to(device) if "hidden" in batch else masked  # every masked patch
                grid = reconstruction_grid(target, reference, outputs["pred"].detach(), hidden,
                                           mcfg.patch_size, cfg.norm_pix_loss)
                _write(str(out / "images"), write_png, out / "images" / f"step{step:08d}.png", grid)
                _write(str(out / "tb"), writer.add_image, "reconstruction", grid, step, dataformats="HWC")

            if step % cfg.ckpt_every == 0 or step == last_step:  # --- checkpoint (only after a finite check)
                check_finite()
                save_checkpoint()
            if stopped:
                break

        if stopped and on_disk[0] != step:  # stopped by a signal: keep this step's work
            check_finite()
            save_checkpoint()
    except RunDirError as err:
        raise write_failed(err) from err.exc
    finally:
        stop.uninstall()
        batches = None  # shuts the loader's workers down, also on errors
        if writer is not None:
            try:
                writer.close()
            except OSError as exc:
                log(f"trainer: warning: cannot write {out / 'tb'}: {' '.join(str(exc).split())}")

    if stopped and step < last_step:
        log(f"stopped by {signal.Signals(stopped).name} at step {step}; checkpoint {ckpt_path} written, "
            "run the same command to resume")
        return {"step": step, "out": str(out), "loss": last_loss, "stopped": stopped}
    if distributed:
        dist.barrier()
    log(f"done: step {step}, checkpoint {ckpt_path}")
    return {"step": step, "out": str(out), "loss": last_loss}


def write_json_lines_atomic(path: Path, lines: list[str]) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.partial")
    tmp.write_text("".join(ln + "\n" for ln in lines))
    os.replace(tmp, path)


def _append_line(path: Path, line: str) -> None:
    with open(path, "a") as f:
        f.write(line + "\n")


def _truncate_metrics(path: Path, step: int) -> None:
    """Drop metric lines written after the checkpoint we resume from (a killed run's tail)."""
    if not path.exists():
        return
    kept = []
    for ln in path.read_text(errors="replace").splitlines():
        try:
            if json.loads(ln)["step"] <= step:
                kept.append(ln)
        except (ValueError, KeyError, TypeError):
            pass  # a line cut short by a kill or a full disk
    write_json_lines_atomic(path, kept)


def main_entry(cfg: PretrainConfig) -> dict:
    """CLI entry: train, then tear down the process group; returns train's summary."""
    try:
        summary = train(cfg)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    sys.stdout.flush()
    return summary
