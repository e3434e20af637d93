"""Build configuration: one dataclass, CLI flags map 1:1, saved resolved next to the shards."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path

KINDS = ("cross_view", "cross_pose")


@dataclass
class BuildConfig:
    source: str = "synthetic"  # which source to build (see `pairgen sources`)
    out: str = "shards"  # output directory
    root: str | None = None  # dataset root (real sources)
    num_pairs: int = 1000  # pairs to build (synthetic: exact; real sources: at most)
    seed: int = 0  # same seed -> same pairs, same bytes
    workers: int = 0  # Ray workers (0 = as many as cores); see `local`
    local: bool = False  # run in this process without Ray (debugging)
    ray_address: str | None = None  # join an existing Ray cluster instead of starting one
    image_size: int = 256  # side of the square crops
    shard_size: int = 500  # pairs per shard
    kinds: tuple[str, ...] = KINDS  # which pair kinds to build
    cross_view_fraction: float = 0.5  # share of cross-view pairs when both kinds are built
    jpeg_quality: int = 95
    retries: int = 2  # extra attempts for a failed shard before it is recorded as failed
    storage_options: tuple[str, ...] = ()  # KEY=VALUE for the filesystem of an --out URL (fsspec), e.g. endpoint_url=...
    replan: bool = False  # plan again even if OUT holds this build's plan (shards of another plan are rebuilt)
    rehash: bool = False  # on resume, re-check every finished shard's SHA-256 (default: sizes, and hashes where mtimes changed)
    split: str | None = None  # keep only this dataset split (real sources)
    # real sources
    annotations: str | None = None  # explicit annotation directory (when shipped apart from the media)
    videos: str | None = None  # explicit video directory (e.g. AIST Dance videos apart from AIST++)
    silhouette: str | None = None  # keypoints | bgsub | smpl | grabcut | box (None = the source's default)
    min_view_angle_deg: float = 0.0  # cross-view: minimum angle between the two cameras (calibrated sources)
    crop_margin: float = 0.2  # extra context around the person box, as a fraction of its side
    min_person_px: int = 48  # skip people whose box is smaller than this (pixels, longer side)
    mano_model: str | None = None  # MANO .pkl/.npz directory or file for the `smpl` silhouette of hands
    reader_options: tuple[str, ...] = ()  # dataset-specific KEY=VALUE settings (see `pairgen sources`)
    # synthetic source
    body: str = "anny"  # anny | smpl
    smpl_model: str | None = None  # SMPL-format .pkl for --body smpl (the user's licensed file)
    motions: str | None = None  # directory of AMASS .npz motions (with --body smpl)
    backgrounds: str | None = None  # directory of background images (default: procedural)
    min_gap_s: float = 0.25  # cross-pose time gap range (seconds)
    max_gap_s: float = 1.5
    min_azimuth_deg: float = 0.0  # cross-view azimuth difference range (degrees)
    max_azimuth_deg: float = 180.0
    framing: str = "wide"  # wide (person spans 0.6-0.88 of the image, 2.5-8 m) | tight (0.86-0.96, like real crops)

    # Fields that change the pairs; a resumed build must match them.
    OUTPUT_FIELDS = ("source", "root", "num_pairs", "seed", "image_size", "shard_size", "kinds",
                     "cross_view_fraction", "jpeg_quality", "split", "body", "smpl_model", "motions",
                     "backgrounds", "min_gap_s", "max_gap_s", "min_azimuth_deg", "max_azimuth_deg",
                     "annotations", "videos", "silhouette", "min_view_angle_deg", "crop_margin",
                     "min_person_px", "mano_model", "reader_options", "framing")

    def validate(self) -> None:
        """Raise ValueError with a one-line message for any bad setting."""
        if self.num_pairs < 1:
            raise ValueError(f"--num-pairs must be >= 1 (got {self.num_pairs})")
        if self.shard_size < 1:
            raise ValueError(f"--shard-size must be >= 1 (got {self.shard_size})")
        if self.image_size < 32 or self.image_size % 16:
            raise ValueError(f"--image-size must be a multiple of 16 and >= 32 (got {self.image_size})")
        if self.retries < 0:
            raise ValueError(f"--retries must be >= 0 (got {self.retries})")
        if self.workers < 0:
            raise ValueError(f"--workers must be >= 0 (got {self.workers})")
        bad = [k for k in self.kinds if k not in KINDS]
        if bad or not self.kinds:
            raise ValueError(f"--kinds takes {', '.join(KINDS)} (got {', '.join(self.kinds) or 'nothing'})")
        if not 0.0 <= self.cross_view_fraction <= 1.0:
            raise ValueError("--cross-view-fraction must be in [0, 1]")
        if not 1 <= self.jpeg_quality <= 100:
            raise ValueError("--jpeg-quality must be in [1, 100]")
        if not 0 < self.min_gap_s <= self.max_gap_s:
            raise ValueError("need 0 < --min-gap-s <= --max-gap-s")
        if not 0 <= self.min_azimuth_deg <= self.max_azimuth_deg <= 180:
            raise ValueError("need 0 <= --min-azimuth-deg <= --max-azimuth-deg <= 180")
        if self.silhouette not in (None, "keypoints", "bgsub", "smpl", "grabcut", "box"):
            raise ValueError(f"--silhouette takes keypoints, bgsub, smpl, grabcut or box (got {self.silhouette})")
        if not 0 <= self.min_view_angle_deg <= 180:
            raise ValueError("--min-view-angle-deg must be in [0, 180]")
        bad_opts = [o for o in self.reader_options if "=" not in o or not o.split("=", 1)[0].strip()]
        if bad_opts:
            raise ValueError(f"--reader-option takes KEY=VALUE (got {', '.join(bad_opts)})")
        if self.crop_margin < 0:
            raise ValueError("--crop-margin must be >= 0")
        if self.framing not in ("wide", "tight"):
            raise ValueError(f"--framing takes wide or tight (got {self.framing})")
        if self.framing != "wide" and self.source != "synthetic":
            raise ValueError(f"--framing is a setting of --source synthetic; --source {self.source} crops "
                             "around the person with --crop-margin")
        if self.body not in ("anny", "smpl"):
            raise ValueError(f"--body takes anny or smpl (got {self.body})")
        if self.body == "smpl" and not self.smpl_model:
            raise ValueError("--body smpl needs --smpl-model FILE (your licensed SMPL .pkl)")
        if self.smpl_model and not Path(self.smpl_model).is_file():
            raise ValueError(f"--smpl-model {self.smpl_model}: no such file")
        if self.mano_model and not Path(self.mano_model).exists():
            raise ValueError(f"--mano-model {self.mano_model}: no such file or directory")
        if self.motions and self.body != "smpl":
            raise ValueError("--motions (AMASS, SMPL poses) needs --body smpl")
        if self.motions and not Path(self.motions).is_dir():
            raise ValueError(f"--motions {self.motions}: not a directory")

    def resolved_workers(self) -> int:
        return self.workers or os.cpu_count() or 1

    def to_json(self) -> dict:
        d = asdict(self)
        d["kinds"] = list(self.kinds)
        d["reader_options"] = list(self.reader_options)
        d["storage_options"] = list(self.storage_options)
        return d

    def to_record(self) -> dict:
        """What is saved as OUT/build-<source>.json: the settings that determine the output
        (:meth:`output_identity`), nothing about where or how it ran (paths, workers, credentials),
        so a resumed or re-run build writes the same bytes."""
        return self.output_identity()

    def output_identity(self) -> dict:
        d = self.to_json()
        return {k: d[k] for k in self.OUTPUT_FIELDS}

    def identity_digest(self) -> str:
        """A short hash of :meth:`output_identity`, recorded in each shard's stats."""
        import hashlib
        import json

        identity = self.output_identity()
        if identity["framing"] == "wide":  # the default: builds made before --framing keep their digest
            del identity["framing"]
        return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]

    @classmethod
    def from_json(cls, d: dict) -> "BuildConfig":
        names = {f.name for f in fields(cls)}
        kw = {k: v for k, v in d.items() if k in names}
        if "kinds" in kw:
            kw["kinds"] = tuple(kw["kinds"])
        for k in ("reader_options", "storage_options"):
            if k in kw:
                kw[k] = tuple(kw[k])
        return cls(**kw)
