"""Source registry: adding a dataset = one module + one line here."""

from __future__ import annotations

import importlib

from pairgen.config import BuildConfig
from pairgen.sources.base import Source, ShardTask, SourceWorker  # noqa: F401 - the public interface

REGISTRY: dict[str, str] = {
    "synthetic": "pairgen.sources.synthetic:SyntheticSource",
    "aist": "pairgen.sources.aist:AistSource",
    "humbi": "pairgen.sources.humbi:HumbiSource",
    "interhand": "pairgen.sources.interhand:InterHandSource",
    "3dpw": "pairgen.sources.threedpw:ThreeDPWSource",
    "posetrack": "pairgen.sources.posetrack:PoseTrackSource",
    "jrdb": "pairgen.sources.jrdb:JrdbSource",
    "mars": "pairgen.sources.mars:MarsSource",
    "pennaction": "pairgen.sources.pennaction:PennActionSource",
}


def source_class(name: str) -> type[Source]:
    if name not in REGISTRY:
        raise ValueError(f"unknown source {name!r}; available: {', '.join(sorted(REGISTRY))}")
    module, cls = REGISTRY[name].split(":")
    return getattr(importlib.import_module(module), cls)


def make_source(config: BuildConfig) -> Source:
    return source_class(config.source)(config)
