"""The two engines that run :mod:`polyviz.runs.pipeline` over shards: ``inprocess`` (default) and
``ray`` (Ray Data)."""

ENGINES = ("inprocess", "ray")
