"""d2scale: D2 Pruning and DRoP data selection at DataComp scale."""

__version__ = "0.1.0"
