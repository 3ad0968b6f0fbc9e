"""Message passing (SPEC §1): weights → forward → reverse (exact, bucketed, standby, CUDA).

Nothing in this package imports back up into the pipeline; it takes arrays and returns
arrays. The entry point is :func:`d2_order`.
"""

from d2scale.d2.order import D2Result, checked_scores, d2_order

__all__ = ["D2Result", "checked_scores", "d2_order"]
