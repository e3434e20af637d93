"""Which target patches the encoder sees (paper section 3.1).

Both functions return ``visible`` ``[B, L]`` int64, sorted patch indices, one length L per batch;
the masked patches are the others (``masked_from_visible``); the loss is computed on all of them
or, with ``--loss-patches human``, on the masked human patches only (``loss_patches``).
"""

from __future__ import annotations

import math

import numpy as np


def uniform_visible(batch: int, num_patches: int, ratio: float, rng: np.random.Generator) -> np.ndarray:
    """CroCo masking: ``floor(ratio * N)`` random patches masked per image, the rest visible."""
    keep = num_patches - math.floor(ratio * num_patches)
    return np.sort(np.stack([rng.permutation(num_patches)[:keep] for _ in range(batch)]), axis=1)


def human_centric_visible(human: np.ndarray, ratio: float, rng: np.random.Generator) -> np.ndarray:
    """Human-centric masking of a batch from ``human`` ``[B, N]`` bool (patch contains the person).

    Per image with N_H human patches, ``N_H - floor(ratio * N_H)`` random human patches stay
    visible; random background patches are then added until every image has L visible patches,
    L being the maximum of N_H over the batch (the paper's fixed per-batch sequence length).
    L is capped so every image has enough background patches to reach it. Images without human
    patches fall back to uniform masking: L random patches (and they count as
    ``N - floor(ratio * N)`` in the maximum, so an all-background batch is masked like CroCo).
    """
    b, n = human.shape
    n_h = human.sum(axis=1)
    keep_h = n_h - np.floor(ratio * n_h).astype(np.int64)
    uniform_keep = n - math.floor(ratio * n)
    wanted = np.where(n_h > 0, n_h, uniform_keep)
    capacity = np.where(n_h > 0, keep_h + (n - n_h), n)
    length = int(min(wanted.max(), capacity.min()))
    visible = np.empty((b, length), dtype=np.int64)
    for i in range(b):
        if n_h[i] == 0:
            visible[i] = rng.permutation(n)[:length]
            continue
        hum = np.flatnonzero(human[i])
        bg = np.flatnonzero(~human[i])
        k = min(int(keep_h[i]), length)
        chosen_h = rng.permutation(hum)[:k]
        chosen_bg = rng.permutation(bg)[: length - k]
        visible[i] = np.concatenate([chosen_h, chosen_bg])
    return np.sort(visible, axis=1)


def masked_from_visible(visible: np.ndarray, num_patches: int) -> np.ndarray:
    """``[B, N]`` bool, True where the patch is masked (not in ``visible``)."""
    masked = np.ones((visible.shape[0], num_patches), dtype=bool)
    np.put_along_axis(masked, visible, False, axis=1)
    return masked


def loss_patches(masked: np.ndarray, human: np.ndarray, mode: str) -> np.ndarray:
    """``[B, N]`` bool, the patches the pixel loss counts (``--loss-patches``): every masked patch
    (``"masked"``, CroCo), or only the masked patches flagged human in ``human`` ``[B, N]`` bool,
    the same flags the human-centric masking uses (``"human"``). A person-free image has none."""
    if mode == "masked":
        return masked
    if mode == "human":
        return masked & human
    raise ValueError(f"loss patches must be 'masked' or 'human', got {mode!r}")
