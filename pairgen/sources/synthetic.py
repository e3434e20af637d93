"""Synthetic humans (the embedded default): nothing to download.

Pair i of a build is drawn from (seed, i) alone; shard k holds pairs [k*S, (k+1)*S).
"""

from __future__ import annotations

from pathlib import Path

from pairgen.config import BuildConfig
from pairgen.record import ShardResult
from pairgen.sources.base import ShardTask, Source, SourceWorker, check_reader_options

MAX_ATTEMPTS = 8
# settings of the real sources the renderer would ignore: refused rather than ignored (a value was given)
REAL_ONLY = (("root", "--root"), ("annotations", "--annotations"), ("videos", "--videos"), ("split", "--split"),
             ("silhouette", "--silhouette"), ("mano_model", "--mano-model"),
             ("min_view_angle_deg", "--min-view-angle-deg"), ("crop_margin", "--crop-margin"),
             ("min_person_px", "--min-person-px"))


class SyntheticWorker(SourceWorker):
    def __init__(self, config):
        import torch

        torch.set_num_threads(1)  # fixed thread count: identical float results on every worker
        from pairgen.synthetic.generator import SyntheticGenerator, SyntheticSettings

        self.config = config
        if config.body == "smpl":
            from pairgen.synthetic.smpl_body import SmplBody
            from pairgen.synthetic.amass import MotionBank

            body = SmplBody(config.smpl_model)
            bank = MotionBank.from_directory(config.motions) if config.motions else None
        else:
            from pairgen.synthetic.body import AnnyBody

            body, bank = AnnyBody(), None
        files = None
        if config.backgrounds:
            from pairgen.synthetic.background import list_background_images

            files = list_background_images(Path(config.backgrounds))
        from pairgen.synthetic.camera import FRAMINGS

        settings = SyntheticSettings(
            image_size=config.image_size, cross_view_fraction=config.cross_view_fraction,
            kinds=tuple(config.kinds), min_gap_s=config.min_gap_s, max_gap_s=config.max_gap_s,
            min_azimuth_deg=config.min_azimuth_deg, max_azimuth_deg=config.max_azimuth_deg,
            **FRAMINGS[config.framing],
        )
        self.generator = SyntheticGenerator(body, settings, files, bank)
        # Warm-up (part of building the worker, like the model): the first pair pays one-time costs
        # (the GL driver compiles its shaders at the first draw, first-call kernel loads).
        self.generator.make_pairs(config.seed, [0, 1])

    def build(self, task: ShardTask) -> ShardResult:
        pairs = []
        result = self.build_into(task, pairs.append)
        result.pairs = pairs
        return result

    def build_into(self, task: ShardTask, sink) -> ShardResult:
        from pairgen.synthetic.generator import RetryPair

        result = ShardResult(pairs=[])
        indices = list(range(task.payload["start"], task.payload["stop"]))
        for index, first in self.generator.iter_pairs(self.config.seed, indices):
            if not isinstance(first, Exception):
                sink(first)
                continue
            # a discarded draw is not a pair lost (the pair is drawn again): a dropped part
            result.drop(f"redrawn: {first}", unit=f"pair{index}/attempt0")
            for attempt in range(1, MAX_ATTEMPTS):
                try:
                    sink(self.generator.make_pair(self.config.seed, index, attempt))
                    break
                except (RetryPair, ValueError) as exc:  # a bad draw (camera fit, static poses)
                    result.drop(f"redrawn: {exc}", unit=f"pair{index}/attempt{attempt}")
            else:
                result.skip("no usable draw", unit=f"pair{index}")
        return result


class SyntheticSource(Source):
    name = "synthetic"
    summary = "SURREAL-style rendered humans (anny body, procedural clothing, lights, backgrounds); cross-view and cross-pose"
    needs = ("nothing (optional: --backgrounds DIR of images; --body smpl --smpl-model FILE [--motions AMASS_DIR]; "
             "--framing tight for person-filling crops like the real sources'); "
             "silhouettes are exact, so --silhouette, --reader-option and the other real-source settings "
             "(--root, --annotations, --videos, --split, --mano-model, --min-view-angle-deg, --crop-margin, "
             "--min-person-px) are refused")

    def check(self) -> None:
        c, default = self.config, BuildConfig()
        given = [flag for key, flag in REAL_ONLY if getattr(c, key) != getattr(default, key)]
        if given:
            raise ValueError(f"--source synthetic does not take {', '.join(given)} (settings of the real sources "
                             "that it would ignore; its silhouettes are exact renders)")
        check_reader_options(self)
        if self.config.motions:
            from pairgen.synthetic.amass import MotionBank

            MotionBank.from_directory(self.config.motions)
        if self.config.body == "smpl":
            from pairgen.synthetic.smpl_body import SmplBody

            SmplBody(self.config.smpl_model)
        if self.config.backgrounds:
            from pairgen.synthetic.background import check_background_images, list_background_images

            check_background_images(list_background_images(Path(self.config.backgrounds)))

    def plan(self) -> list[ShardTask]:
        n, size = self.config.num_pairs, self.config.shard_size
        return [ShardTask(self.name, k, min(n, (k + 1) * size) - k * size,
                          {"start": k * size, "stop": min(n, (k + 1) * size)})
                for k in range((n + size - 1) // size)]

    def make_worker(self) -> SourceWorker:
        return SyntheticWorker(self.config)
