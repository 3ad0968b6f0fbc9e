"""Training-dynamics scores (SPEC §3), logged for every sample at every presentation.

``DynamicsLog.update`` is called with each training mini-batch's logits (train mode, as
augmented for training); ``DynamicsLog.result`` adds the final model's prediction entropy
and returns one float array per score. Orientation: :func:`difficulty` turns any score into
"higher = harder = more valuable to keep".
"""

from __future__ import annotations

import warnings

import numpy as np
import torch
import torch.nn.functional as F

from d2scale.errors import D2ScaleError
from d2scale.vision.registry import SCORE_ALIASES, SCORES

EARLY_EPOCHS = 10  # EL2N and GraNd: averaged over the first 10 epochs
WINDOW = 10  # dynamic uncertainty: sliding window of J = 10 epochs


def score_name(name: str) -> str:
    """The canonical score name for ``name`` or an alias (``aum``, ``dynunc``)."""
    key = SCORE_ALIASES.get(name.lower(), name.lower())
    if key not in SCORES:
        options = ", ".join(SCORES + tuple(SCORE_ALIASES))
        raise D2ScaleError(f"--score must be one of {options}; got {name!r}.")
    return key


def difficulty(scores: dict[str, np.ndarray], name: str) -> np.ndarray:
    """Score ``name`` oriented so that higher means harder (kept first by top-k): every score
    as is, except the accumulated margin, whose *low* values mark hard samples."""
    key = score_name(name)
    s = np.asarray(scores[key], dtype=np.float64)
    return -s if key == "accumulated_margin" else s


class DynamicsLog:
    """Per-sample accumulators over ``n`` training samples (global ids), on ``device``."""

    def __init__(self, n: int, epochs: int, device: torch.device):
        z = lambda dtype: torch.zeros(n, dtype=dtype, device=device)  # noqa: E731
        self.state = {
            "presentations": z(torch.int32),
            "last_correct": z(torch.bool),
            "forgetting": z(torch.int32),
            "margin_sum": z(torch.float32),
            "el2n_sum": z(torch.float32),
            "grand_sum": z(torch.float32),
            "early_count": z(torch.int32),
            # p_y at each epoch's presentation (NaN: not presented), for dynamic uncertainty
            "p_true": torch.full((epochs, n), float("nan"), device=device),
        }

    @torch.no_grad()
    def update(
        self, epoch: int, idx: torch.Tensor, logits: torch.Tensor, y: torch.Tensor, h: torch.Tensor
    ) -> None:
        """Record one presentation of samples ``idx`` (logits, labels, penultimate features)."""
        s = self.state
        p = F.softmax(logits.float(), dim=1)
        correct = p.argmax(1) == y
        s["forgetting"][idx] += (s["last_correct"][idx] & ~correct).int()
        s["last_correct"][idx] = correct
        s["presentations"][idx] += 1
        p_y = p.gather(1, y[:, None])[:, 0]
        others = p.scatter(1, y[:, None], float("-inf"))
        s["margin_sum"][idx] += p_y - others.max(1).values
        s["p_true"][epoch, idx] = p_y
        if epoch < EARLY_EPOCHS:
            err_norm = el2n_of(p, y)
            s["el2n_sum"][idx] += err_norm
            s["grand_sum"][idx] += grand_of(err_norm, h)
            s["early_count"][idx] += 1

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.state

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        for k, v in state.items():
            self.state[k].copy_(v)

    def result(self, entropy: np.ndarray, targets: np.ndarray) -> dict[str, np.ndarray]:
        """Every score as a float array over the ``n`` samples (0 where never presented);
        ``entropy`` comes from the final model."""
        s = {k: v.cpu().numpy() for k, v in self.state.items()}
        early = np.maximum(s["early_count"], 1)
        return {
            "forgetting": s["forgetting"].astype(np.float32),
            "accumulated_margin": s["margin_sum"],
            "el2n": (s["el2n_sum"] / early).astype(np.float32),
            "entropy": np.asarray(entropy, dtype=np.float32),
            "dynamic_uncertainty": dynamic_uncertainty(s["p_true"]),
            "grand": (s["grand_sum"] / early).astype(np.float32),
            "presentations": s["presentations"],
            "targets": np.asarray(targets, dtype=np.int64),
        }


def dynamic_uncertainty(p_true: np.ndarray, window: int = WINDOW) -> np.ndarray:
    """Mean over sliding windows of ``window`` epochs of the std of ``p_y`` (one window of
    every epoch when fewer were run); epochs where a sample was not presented are skipped."""
    epochs, n = p_true.shape
    w = min(window, epochs)
    out = np.zeros(n, dtype=np.float64)
    if n == 0 or epochs == 0:
        return out.astype(np.float32)
    windows = np.lib.stride_tricks.sliding_window_view(p_true, w, axis=0)  # (E-w+1, n, w)
    with warnings.catch_warnings():  # all-NaN windows (never presented) → NaN → 0
        warnings.simplefilter("ignore", RuntimeWarning)
        stds = np.nanstd(windows, axis=2)
        out = np.nanmean(stds, axis=0)
    return np.nan_to_num(out, nan=0.0).astype(np.float32)


def el2n_of(p: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """‖softmax − onehot(y)‖₂ per row of probabilities ``p``."""
    return (p - F.one_hot(y, p.shape[1]).float()).norm(dim=1)


def grand_of(err_norm: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """Exact per-sample norm of the loss gradient w.r.t. the last layer (weights and bias):
    ‖(p − y)·hᵀ‖ and ‖p − y‖ combine to ‖p − y‖·√(‖h‖² + 1)."""
    return err_norm * torch.sqrt(h.float().pow(2).sum(1) + 1)


def entropy_of(logits: torch.Tensor) -> torch.Tensor:
    """Shannon entropy (nats) of the softmax of each row."""
    logp = F.log_softmax(logits.float(), dim=1)
    return -(logp.exp() * logp).sum(1)
