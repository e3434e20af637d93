"""Trainer benchmarks: data loader throughput and training-step throughput (+ MFU on GPU).

    python tools/bench_trainer.py                       # builds pairgen synthetic shards in a temp dir
    python tools/bench_trainer.py --shards OUT --gpu-preset vitb-dec512x8 --batch-size 64

(a) loader: pairs/s of one loader worker (decode, crop, silhouette patches, masks, batching)
    and its ratio to raw JPEG decoding of the same shards (both JPEGs of each pair, bytes already in
    memory; goal >= 0.6), and to reading the tars + decoding (the floor of any loader).
(b) steps: CPU with the tiny preset; on a GPU the chosen preset in bf16 with MFU
    (model FLOPs = 3 x forward matmul FLOPs, counted analytically for the visible-token lengths).
Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import simplejpeg
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from trainer.config import get_preset  # noqa: E402
from trainer.data import PairStream, StreamConfig, resolve_shards, to_model_input  # noqa: E402
from trainer.loop import param_groups  # noqa: E402
from trainer.model import CroCoMan  # noqa: E402
from trainer.objective import Pretrainer  # noqa: E402

PEAK_BF16_TFLOPS = {"H100": 989.4, "H200": 989.4, "A100": 312.0}


def bench_loader(spec: str, pairs: int, rounds: int = 3) -> dict:
    """Loader vs raw decoding, measured in alternating rounds (best round of each: the least
    disturbed by other work on the machine). The loader runs as one DataLoader worker does:
    one OpenCV and one torch thread."""
    import cv2
    from webdataset.tariterators import tarfile_samples

    cv2_threads, torch_threads = cv2.getNumThreads(), torch.get_num_threads()
    cv2.setNumThreads(1)
    torch.set_num_threads(1)
    shards = resolve_shards(spec)
    raw = list(tarfile_samples({"url": u} for u in shards.urls))[:pairs]
    stream = PairStream(shards, StreamConfig(batch_size=32, shuffle_buffer=100), verbose=False)
    it = iter(stream)
    next(it)  # warm-up (opens the first shard)
    decode_rate = read_decode_rate = loader_rate = 0.0
    for _ in range(rounds):
        t = time.perf_counter()
        for s in raw:
            simplejpeg.decode_jpeg(s["target.jpg"], colorspace="RGB")
            simplejpeg.decode_jpeg(s["reference.jpg"], colorspace="RGB")
        decode_rate = max(decode_rate, len(raw) / (time.perf_counter() - t))
        t, n = time.perf_counter(), 0
        for s in tarfile_samples({"url": u} for u in shards.urls):  # the floor of any loader: read + decode
            simplejpeg.decode_jpeg(s["target.jpg"], colorspace="RGB")
            simplejpeg.decode_jpeg(s["reference.jpg"], colorspace="RGB")
            n += 1
            if n == len(raw):
                break
        read_decode_rate = max(read_decode_rate, n / (time.perf_counter() - t))
        n, t = 0, time.perf_counter()
        while n < pairs:
            n += len(next(it)["key"])
        loader_rate = max(loader_rate, n / (time.perf_counter() - t))
    cv2.setNumThreads(cv2_threads)
    torch.set_num_threads(torch_threads)
    return {"raw_jpeg_decode_pairs_per_s": round(decode_rate, 1),
            "loader_pairs_per_s_per_worker": round(loader_rate, 1),
            "loader_vs_decode": round(loader_rate / decode_rate, 3),
            "tar_read_and_decode_pairs_per_s": round(read_decode_rate, 1),
            "loader_vs_read_and_decode": round(loader_rate / read_decode_rate, 3),
            "rounds": rounds}


def build_synthetic_shards(out: Path, pairs: int) -> str:
    """pairgen's synthetic shards (the embedded default source: real rendered people, 256x256),
    built in a subprocess so the build's thread settings do not leak into the measurements."""
    import subprocess

    cmd = [sys.executable, "-m", "pairgen.cli", "build", "--source", "synthetic", "--out", str(out),
           "--num-pairs", str(pairs), "--shard-size", str(max(1, pairs // 4)), "--local", "--quiet"]
    subprocess.run(cmd, check=True, cwd=Path(__file__).resolve().parents[1], stdout=subprocess.DEVNULL)
    return str(out)


def forward_flops(cfg, visible: int) -> float:
    """Forward matmul FLOPs of one pair (2 x multiply-adds): two encoders, decoder, head."""
    n, de, dd = cfg.num_patches, cfg.enc_embed_dim, cfg.dec_embed_dim
    patch_in = 3 * cfg.patch_size ** 2

    def encoder(tokens):
        per_block = tokens * 12 * de * de + 2 * tokens * tokens * de
        return tokens * patch_in * de + cfg.enc_depth * per_block

    dec_block = n * (4 * dd * dd + 2 * n * dd) + n * (2 * dd * dd + 2 * dd * dd + 2 * n * dd) + n * 8 * dd * dd
    macs = encoder(visible) + encoder(n) + (visible + n) * de * dd + cfg.dec_depth * dec_block + n * dd * patch_in
    return 2.0 * macs


def bench_steps(preset: str, batch: int, steps: int, device: torch.device, bf16: bool, compile_: bool,
                visible: int) -> dict:
    cfg = get_preset(preset)
    torch.manual_seed(0)
    net = Pretrainer(CroCoMan(cfg)).to(device)
    opt = torch.optim.AdamW(param_groups(net, 0.05), lr=1e-4, betas=(0.9, 0.95), fused=device.type == "cuda")
    fwd = torch.compile(net) if compile_ else net
    s = cfg.img_size
    u8 = torch.randint(0, 256, (batch, s, s, 3), dtype=torch.uint8, device=device)
    jitter = torch.ones(batch, 3)
    n = cfg.num_patches
    vis = torch.sort(torch.stack([torch.randperm(n)[:visible] for _ in range(batch)]), dim=1).values.to(device)
    masked = torch.ones(batch, n, dtype=torch.bool, device=device).scatter_(1, vis, False)
    kp = torch.zeros(batch, 13, 3, device=device)

    def step():
        target, reference = to_model_input(u8, jitter), to_model_input(u8.flip(1), jitter)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            loss = fwd(target, reference, vis, masked, kp)["loss"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(3):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    rate = steps * batch / (time.perf_counter() - t)
    out = {"preset": preset, "device": str(device), "batch": batch, "visible": visible, "bf16": bf16,
           "compile": compile_, "pairs_per_s": round(rate, 1)}
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        peak = next((v for k, v in PEAK_BF16_TFLOPS.items() if k in name), None)
        achieved = 3 * forward_flops(cfg, visible) * rate
        out |= {"gpu": name, "model_tflops": round(achieved / 1e12, 1)}
        if peak:
            out["mfu"] = round(achieved / (peak * 1e12), 3)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shards", default="", help="shards to read (default: build synthetic ones in a temp dir)")
    ap.add_argument("--loader-pairs", type=int, default=512)
    ap.add_argument("--cpu-steps", type=int, default=10)
    ap.add_argument("--gpu-preset", default="vitb-dec512x8")
    ap.add_argument("--batch-size", type=int, default=64, help="GPU batch (CPU tiny uses 8)")
    ap.add_argument("--gpu-steps", type=int, default=30)
    ap.add_argument("--compile", action="store_true", help="torch.compile the GPU model")
    ap.add_argument("--visible", type=int, default=98, help="visible target patches per pair (human-centric: ~N_H max)")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    result = {"torch": torch.__version__, "cpu_threads": torch.get_num_threads()}
    with tempfile.TemporaryDirectory() as tmp:
        spec = args.shards
        if not spec:
            spec = build_synthetic_shards(Path(tmp) / "synthetic", args.loader_pairs + 128)
        result["loader"] = bench_loader(spec, args.loader_pairs)
    result["cpu_tiny"] = bench_steps("tiny", 8, args.cpu_steps, torch.device("cpu"), False, False, args.visible)
    if torch.cuda.is_available():
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        result["gpu"] = bench_steps(args.gpu_preset, args.batch_size, args.gpu_steps, torch.device("cuda"),
                                    True, args.compile, args.visible)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
