"""`pairgen` command line: build, sources, verify, stats, preview."""

from __future__ import annotations

import argparse
import json
import signal
import sys
from dataclasses import fields

from pairgen.config import KINDS, BuildConfig

EXIT_BAD_INPUT = 2


def _error(msg: str) -> int:
    print(f"pairgen: error: {msg}", file=sys.stderr)
    return EXIT_BAD_INPUT


class OneLineParser(argparse.ArgumentParser):
    """Usage errors as one line plus where to look, not the whole usage (exit code 2)."""

    def error(self, message: str):
        self.exit(EXIT_BAD_INPUT, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _add_storage_option(p) -> None:
    p.add_argument("--storage-option", dest="storage_options", action="append", default=[], metavar="KEY=VALUE",
                   help="setting of the object store's filesystem, repeatable (fsspec/s3fs keys, e.g. "
                        "endpoint_url=http://host:9000, anon=true, client_kwargs.region_name=eu-west-1); "
                        "credentials come from the environment (AWS_ACCESS_KEY_ID, ...) or fsspec config")


def _storage_options(args) -> dict:
    from manifests.storage import parse_options

    return parse_options(getattr(args, "storage_options", None))


def _kinds(text: str) -> tuple[str, ...]:
    kinds = tuple(k.strip().replace("-", "_") for k in text.split(",") if k.strip())
    bad = [k for k in kinds if k not in KINDS]
    if bad or not kinds:
        raise argparse.ArgumentTypeError(f"takes a comma list of {', '.join(KINDS)}")
    return kinds


def _add_build(sub) -> None:
    d = BuildConfig()
    p = sub.add_parser("build", help="build pair shards from a source",
                       description="Build WebDataset shards of cross-view / cross-pose pairs, with Parquet "
                                   "manifests. Re-running the same command resumes an interrupted build.")
    p.add_argument("--source", default=d.source, help="source name (see `pairgen sources`) [%(default)s]")
    p.add_argument("--out", required=True,
                   help="output directory or object-storage URL (s3://bucket/prefix, gs://..., any fsspec URL); "
                        "created; must be empty or a pairgen output")
    p.add_argument("--root", default=None, help="dataset root (real sources)")
    p.add_argument("--num-pairs", type=int, default=d.num_pairs, help="pairs to build [%(default)s]")
    p.add_argument("--seed", type=int, default=d.seed, help="same seed -> same pairs and bytes [%(default)s]")
    p.add_argument("--workers", type=int, default=d.workers, help="Ray workers (0 = number of cores) [%(default)s]")
    p.add_argument("--local", action="store_true", help="run in this process, without Ray (debugging)")
    p.add_argument("--ray-address", default=None,
                   help="join this Ray cluster instead of starting a local one (then --workers defaults to the "
                        "cluster's CPUs; a local --out must be shared by every node)")
    _add_storage_option(p)
    p.add_argument("--image-size", type=int, default=d.image_size, help="side of the square crops [%(default)s]")
    p.add_argument("--shard-size", type=int, default=d.shard_size, help="pairs per shard [%(default)s]")
    p.add_argument("--kinds", type=_kinds, default=d.kinds, help="cross_view,cross_pose [both]")
    p.add_argument("--cross-view-fraction", type=float, default=d.cross_view_fraction,
                   help="share of cross-view pairs when both kinds are built [%(default)s]")
    p.add_argument("--jpeg-quality", type=int, default=d.jpeg_quality,
                   help="JPEG quality (1-100) of the target and reference images (4:4:4) [%(default)s]")
    p.add_argument("--retries", type=int, default=d.retries, help="extra attempts per failed shard [%(default)s]")
    p.add_argument("--replan", action="store_true",
                   help="plan again (re-read the dataset's annotations) instead of reusing OUT/plan-<source>.parquet; "
                        "finished shards that the new plan changes are rebuilt")
    p.add_argument("--rehash", action="store_true",
                   help="on resume, re-check the SHA-256 of every finished shard (reads them all; by default "
                        "sizes are checked, and checksums where a file's mtime changed)")
    p.add_argument("--split", default=None, help="keep only this dataset split (real sources)")
    r = p.add_argument_group("real sources")
    r.add_argument("--annotations", default=None, help="annotation directory, when apart from --root (AIST++)")
    r.add_argument("--videos", default=None, help="video directory, when apart from --root (AIST Dance videos)")
    r.add_argument("--silhouette", default=None, choices=("keypoints", "bgsub", "smpl", "grabcut", "box"),
                   help="silhouette method (default: the source's)")
    r.add_argument("--min-view-angle-deg", type=float, default=d.min_view_angle_deg,
                   help="cross-view: minimum angle between the cameras [%(default)s]")
    r.add_argument("--crop-margin", type=float, default=d.crop_margin, help="context around the person [%(default)s]")
    r.add_argument("--min-person-px", type=int, default=d.min_person_px, help="skip smaller people [%(default)s]")
    r.add_argument("--mano-model", default=None, help="MANO model file/dir for hand `smpl` silhouettes")
    r.add_argument("--reader-option", dest="reader_options", action="append", default=[], metavar="KEY=VALUE",
                   help="dataset-specific setting, repeatable (listed by `pairgen sources`)")
    g = p.add_argument_group("synthetic source")
    g.add_argument("--body", default=d.body, choices=("anny", "smpl"), help="body model [%(default)s]")
    g.add_argument("--smpl-model", default=None, help="SMPL-format .pkl (your licensed file) for --body smpl")
    g.add_argument("--motions", default=None, help="directory of AMASS .npz motions (needs --body smpl)")
    g.add_argument("--backgrounds", default=None, help="directory of background images (default: procedural)")
    g.add_argument("--min-gap-s", type=float, default=d.min_gap_s, help="cross-pose gap range [%(default)s]")
    g.add_argument("--max-gap-s", type=float, default=d.max_gap_s, help="[%(default)s]")
    g.add_argument("--min-azimuth-deg", type=float, default=d.min_azimuth_deg, help="cross-view azimuth range [%(default)s]")
    g.add_argument("--max-azimuth-deg", type=float, default=d.max_azimuth_deg, help="[%(default)s]")
    g.add_argument("--framing", default=d.framing, choices=("wide", "tight"),
                   help="wide: the person spans 0.6-0.88 of the image, cameras 2.5-8 m away; tight: 0.86-0.96 "
                        "from 2-5 m, like the real sources' person crops; whole body visible in both [%(default)s]")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def _interrupted_line(cfg: BuildConfig, signum: int) -> str:
    from manifests import layout
    from manifests.storage import Store, parse_options

    kept = ""
    try:
        n = len([s for s in layout.finished_shards(Store(cfg.out, parse_options(cfg.storage_options)))
                 if layout.SHARD_RE.match(s).group("source") == cfg.source])
        kept = f"{n} finished shard(s) kept in {cfg.out}; "
    except Exception:  # noqa: BLE001 - the line is printed whatever the output's state
        kept = f"finished shards are kept in {cfg.out}; "
    return f"pairgen: interrupted by {signal.Signals(signum).name}: {kept}re-run the same command to resume"


def cmd_build(args) -> int:
    from pairgen.build import BuildError, run_build
    from pairgen.writer import OutputError

    names = {f.name for f in fields(BuildConfig)}
    kw = {k: v for k, v in vars(args).items() if k in names}
    kw["reader_options"] = tuple(kw.get("reader_options") or ())
    kw["storage_options"] = tuple(kw.get("storage_options") or ())
    cfg = BuildConfig(**kw)
    from pairgen import interrupt
    from pairgen.interrupt import Interrupted

    interrupt.install()
    try:
        summary = run_build(cfg, progress=not args.quiet)
    except KeyboardInterrupt as exc:  # ours (Interrupted), or re-raised by a library as a plain one (ray.get)
        signum = exc.signum if isinstance(exc, Interrupted) else interrupt.received() or signal.SIGINT
        print(_interrupted_line(cfg, signum), file=sys.stderr, flush=True)
        return 128 + signum
    except BuildError as exc:
        return _error(str(exc))
    except OutputError as exc:
        print(f"pairgen: error: {exc}; finished shards are kept: fix the output and re-run the same "
              "command to resume", file=sys.stderr)
        return 1
    empty = f", {summary['shards_empty']} empty" if summary["shards_empty"] else ""
    repaired = f", {len(summary['shards_repaired'])} rebuilt after damage" if summary["shards_repaired"] else ""
    print(f"built {summary['pairs_built']} pairs in {summary['shards_built']} shards "
          f"({summary['shards_skipped_finished']} already finished{empty}{repaired}) in {summary['seconds']} s"
          f" -> {cfg.out}")
    from collections import Counter

    from pairgen.stats import accounting_lines

    dropped = Counter()  # parts left out that are not planned pairs, e.g. synthetic draws made again
    for shard in summary.get("shards", []):
        dropped.update((shard.get("metrics") or {}).get("dropped", {}))
    for line in accounting_lines(summary["skipped"], dropped):
        print(line)
    if summary["shards_failed"]:
        print(f"FAILED shards ({len(summary['shards_failed'])}): {', '.join(summary['shards_failed'])}; "
              f"details in {cfg.out}/failures-{cfg.source}.json; re-run the same command to resume",
              file=sys.stderr)
        return 1
    return 0


def cmd_sources(args) -> int:
    from pairgen.sources import REGISTRY, source_class

    for name in sorted(REGISTRY):
        cls = source_class(name)
        print(f"{name}\n  {cls.summary}\n  needs: {cls.needs}")
        if cls.layout:
            print("  layout:\n" + "\n".join("    " + line for line in cls.layout.strip().splitlines()))
        if getattr(cls, "option_help", None):
            print("  reader options (--reader-option KEY=VALUE):")
            for key, text in sorted(cls.option_help.items()):
                print(f"    {key}: {text}")
    return 0


def cmd_verify(args) -> int:
    from pairgen.verify import verify

    from manifests.storage import StorageError

    try:
        report = verify(args.dir, _storage_options(args))
    except StorageError as exc:
        return _error(str(exc))
    for line in report["problems"][:50]:
        print(f"problem: {line}")
    print(json.dumps({k: v for k, v in report.items() if k != "problems"}, indent=None))
    if not report["ok"]:
        print(f"verify FAILED: {len(report['problems'])} problems", file=sys.stderr)
        return 1
    print("verify OK")
    return 0


def cmd_stats(args) -> int:
    from pairgen.stats import stats

    try:
        print(stats(args.dir, plot=args.plot, storage_options=_storage_options(args)))
    except ValueError as exc:
        return _error(str(exc))
    return 0


def cmd_preview(args) -> int:
    from pairgen.preview import preview

    try:
        n = preview(args.dir, args.out, num=args.num, seed=args.seed, storage_options=_storage_options(args))
    except ValueError as exc:
        return _error(str(exc))
    print(f"wrote {args.out} ({n} pairs)")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = OneLineParser(prog="pairgen", description="Cross-view / cross-pose human pair generator")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=OneLineParser)
    _add_build(sub)
    sub.add_parser("sources", help="list the sources and what each needs")
    p = sub.add_parser("verify", help="check that a build is complete and intact",
                       description="Exit 0 only if the build is complete (every planned shard finished, none "
                                   "failed, nothing in progress) and intact (sizes and SHA-256 as recorded, every "
                                   "sample decodes and agrees with its manifest row, no stray files). A re-run of "
                                   "the build command repairs what it reports.")
    p.add_argument("dir", help="a pairgen output directory or URL (s3://bucket/prefix)")
    _add_storage_option(p)
    p = sub.add_parser("stats", help="counts per source/kind and distributions")
    p.add_argument("dir", help="a pairgen output directory or URL (s3://bucket/prefix)")
    _add_storage_option(p)
    p.add_argument("--plot", default=None, help="write histograms to this PNG")
    p = sub.add_parser("preview", help="contact sheet of pairs with silhouettes overlaid")
    p.add_argument("dir", help="a pairgen output directory or URL (s3://bucket/prefix)")
    _add_storage_option(p)
    p.add_argument("--out", required=True, help="PNG file to write")
    p.add_argument("--num", type=int, default=16, help="pairs to show [%(default)s]")
    p.add_argument("--seed", type=int, default=0, help="which pairs are drawn [%(default)s]")
    args = parser.parse_args(argv)
    handler = {"build": cmd_build, "sources": cmd_sources, "verify": cmd_verify, "stats": cmd_stats,
               "preview": cmd_preview}[args.command]
    return handler(args)


if __name__ == "__main__":
    sys.exit(main())
