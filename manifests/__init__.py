"""The contract between pairgen (writes shards) and trainer (reads them).

- :mod:`manifests.sample`: the members of one sample in a WebDataset tar and their encoding.
- :mod:`manifests.schema`: the typed Parquet manifest columns.
- :mod:`manifests.layout`: where shards, manifests, stats and configs live in an output directory.

This package imports neither pairgen nor trainer.
"""

from manifests import layout, sample, schema  # noqa: F401

__all__ = ["layout", "sample", "schema"]
