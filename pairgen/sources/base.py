"""The source interface: every dataset (and the synthetic renderer) is one module implementing it.

The driver calls :meth:`Source.plan` once (deterministic given the config: it lists work units
and mines pairs; its tasks are streamed to the plan file, see :mod:`pairgen.plan`), then each worker builds a :class:`SourceWorker` once (expensive state:
body model, renderer, decoders) and calls :meth:`SourceWorker.build_into` per shard task. Readers never
write: the encoder and writer turn what ``build`` returns into shards.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Callable, Iterable
from dataclasses import dataclass, field

from pairgen.config import BuildConfig
from pairgen.record import PairRecord, ShardResult


@dataclass
class ShardTask:
    """One shard's worth of work; ``payload`` is plain data (picklable, JSON-able)."""

    source: str
    index: int
    planned: int  # pairs planned for this shard
    payload: dict = field(default_factory=dict)


class SourceWorker(ABC):
    @abstractmethod
    def build(self, task: ShardTask) -> ShardResult:
        """Build the pairs of one shard, deterministically from the task alone."""

    def build_into(self, task: ShardTask, sink: Callable[[PairRecord], None]) -> ShardResult:
        """Build the shard handing each pair to ``sink``, in order; the result's ``pairs`` is empty.

        A worker that overrides this hands each pair over as soon as it is made, so the encoder
        reads its arrays while they are still in the CPU caches (and a shard's images are never
        all in memory at once). The default builds the whole shard first.
        """
        result = self.build(task)
        for record in result.pairs:
            sink(record)
        result.pairs = []
        return result


class Source(ABC):
    name: str = ""
    summary: str = ""  # one line for `pairgen sources`
    needs: str = ""  # what the user must provide
    layout: str = ""  # expected root layout (real sources)
    # the --reader-option keys this source accepts, key -> one-line help; any other key is refused
    # by check() (real sources: their Reader's ``option_help``)
    option_help: dict[str, str] = {}

    def __init__(self, config: BuildConfig):
        self.config = config

    def check(self) -> None:
        """Validate inputs before any work starts (raise ValueError with a one-line message)."""

    @abstractmethod
    def plan(self) -> Iterable[ShardTask]:
        """Every shard task of this build, each index once, in any order (a generator is best: the
        driver streams the tasks to ``OUT/plan-<source>.parquet`` and never holds them all)."""

    @abstractmethod
    def make_worker(self) -> SourceWorker:
        """Per-worker state, built once per worker process."""


def check_reader_options(source: Source) -> None:
    """Refuse ``--reader-option`` keys the source does not declare in ``option_help``, and a key
    given twice (ValueError, one line naming the accepted keys): a misspelt option would otherwise
    be ignored without a word."""
    keys = [item.partition("=")[0].strip() for item in source.config.reader_options]
    accepted = source.option_help
    what = f"accepted: {', '.join(sorted(accepted))}" if accepted else "it accepts none"
    unknown = sorted({k for k in keys if k not in accepted})
    if unknown:
        raise ValueError(f"--source {source.name}: unknown --reader-option {', '.join(unknown)} ({what})")
    twice = sorted({k for k in keys if keys.count(k) > 1})
    if twice:
        raise ValueError(f"--source {source.name}: --reader-option {', '.join(twice)} given more than once")
