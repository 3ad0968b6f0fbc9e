"""Image-classification data pruning: datasets, models, a trainer that logs training
dynamics, coreset selection (random, top-k, D2, CCS, Moderate, k-center), the experiment grid
and DRoP (quotas, pruning, active learning, CDB-W).

Modules import torch; nothing here is imported by ``import d2scale``.
"""
