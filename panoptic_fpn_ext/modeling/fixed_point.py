"""The combiner's parallel path: every instance decided at once, by a fixed point (any device).

Its operator calls per image do not grow with the number of instances, except for a few rounds of
the fixed point; on a GPU that is a fixed number of kernels and host synchronisations per image,
where the sequential path (:mod:`.placement`) makes a few per instance.

The instances are ranked best first (Detectron2's order). Every set pixel of every mask is listed
once, as a (rank, pixel) pair. A round takes a guess of the accepted set, finds for every pixel
the first accepted instance covering it (a scatter-min over the pairs), counts for every instance
the pixels of its mask owned by an instance ranked before it, and decides every instance from
that count with Detectron2's test. :func:`accept_instances` proves that the rounds reach exactly
Detectron2's decisions. Stuff areas, the area limit and segment numbering are then a histogram and
cumulative sums, and the panoptic map is two table look-ups.
"""

from typing import NamedTuple, Tuple

import torch
from torch.nn import functional as F

from .placement import Placement, Threshold, label_limits, per_instance

__all__ = ["MaskPixels", "accept_instances", "combine_parallel", "mask_pixels"]


def _considered_by_rank(scores: torch.Tensor, score_threshold: float) -> Tuple[torch.Tensor, ...]:
    """Detectron2's order and stopping rule, without leaving the device.

    Args:
        scores: float (N,), on the device Detectron2 would sort them on (``torch.argsort(-scores)``
            breaks ties by device).
    Returns:
        order: int64 (N,) instance indices, best first.
        rank: int64 (N,), ``rank[order[r]] = r``.
        considered: bool (N,) by rank: no score up to this rank is below the threshold (compared in
            float64, as Detectron2 compares Python floats).
    """
    order = torch.argsort(-scores)
    below = scores[order].double() < score_threshold
    considered = below.cumsum(dim=0) == 0
    rank = torch.empty_like(order).scatter_(0, order, torch.arange(len(order), device=order.device))
    return order, rank, considered


class MaskPixels(NamedTuple):
    """Every set pixel of every mask, grouped by instance (P = total mask area).

    ranks: int64 (P,), the rank of the instance the pixel belongs to.
    pixels: int64 (P,), the pixel's index ``y * W + x``.
    bounds: int64 (N + 1,), instance ``n``'s pixels are entries ``bounds[n]:bounds[n + 1]``.
    order: int64 (N,), instance indices by rank.
    """

    ranks: torch.Tensor
    pixels: torch.Tensor
    bounds: torch.Tensor
    order: torch.Tensor

    def sums_by_rank(self, values: torch.Tensor) -> torch.Tensor:
        """int64 (N,) by rank: the sum of int64 ``values`` (P,) over each instance's pixels.
        Differences of a cumulative sum, so no two threads add into the same counter."""
        totals = F.pad(values.cumsum(dim=0), (1, 0))
        return (totals[self.bounds[1:]] - totals[self.bounds[:-1]])[self.order]


def mask_pixels(masks: torch.Tensor, order: torch.Tensor, rank: torch.Tensor) -> MaskPixels:
    """The (rank, pixel) pairs of ``masks`` (one host synchronisation, for their number).

    Args:
        masks: bool (N, H, W).
        order, rank: int64 (N,) from :func:`_considered_by_rank`.
    """
    instance, pixel = masks.flatten(1).nonzero().unbind(dim=1)  # sorted by instance
    starts = torch.arange(len(order) + 1, device=masks.device)
    return MaskPixels(rank[instance], pixel, torch.searchsorted(instance, starts), order)


def accept_instances(
    pairs: MaskPixels,
    considered: torch.Tensor,
    num_pixels: int,
    overlap_threshold: Threshold,
) -> Tuple[torch.Tensor, torch.Tensor, int]:
    """Detectron2's accepted instances, and each pixel's owner, by a parallel fixed point.

    Detectron2 accepts instance ``i`` (by rank) when it is considered, its mask is non-empty and
    ``taken_i * 1.0 / area_i > overlap_threshold`` is false, where ``taken_i`` counts the pixels
    of its mask that an accepted instance ranked before ``i`` covers. Write that decision as
    ``A_i = D_i(A_0, ..., A_{i-1})``: it depends on earlier decisions only. Each round computes
    ``A' = D(A)`` for all ``i`` at once from the current guess ``A``.

    Exactness and termination: the sequential decisions ``A*`` are the only fixed point of ``D``
    (by induction on ``i``: ``A_i = D_i(A*_0..A*_{i-1}) = A*_i``). If a guess agrees with ``A*``
    on ranks ``< m``, the next agrees on ranks ``<= m`` (``D_m`` reads only ranks ``< m``). So the
    t-th guess agrees on ranks ``< t``: at most N + 1 rounds reach a round whose output equals its
    input, and that set is ``A*``. In practice a round settles every instance whose earlier
    overlapping instances are settled, and a few rounds suffice (a chain in which each instance
    decides the next is the slow case: one round per instance).

    Each round is a fixed number of operators on the P pairs and the H * W pixels, plus one host
    synchronisation (the convergence test).

    Args:
        pairs: from :func:`mask_pixels`.
        considered: bool (N,) by rank: the instances that may be accepted.
        num_pixels: H * W.
        overlap_threshold: the largest taken share (0..1) of a mask that still accepts it; or
            float64 (N,) by rank, one per instance, on ``considered``'s device.
    Returns:
        accepted: bool (N,) by rank.
        owner: int64 (H * W,), the rank of the accepted instance owning each pixel, N if none.
        rounds: the number of rounds run (>= 1).
    """
    num = len(considered)
    area = pairs.sums_by_rank(torch.ones_like(pairs.ranks))
    allowed = considered & (area > 0)
    accepted = allowed
    free = torch.full((num_pixels,), num, dtype=torch.int64, device=considered.device)
    for rounds in range(1, num + 2):
        owner, decided = _round(pairs, accepted, allowed, area, free, overlap_threshold)
        if torch.equal(decided, accepted):
            break
        accepted = decided
    return accepted, owner, rounds


def _round(
    pairs: MaskPixels,
    accepted: torch.Tensor,
    allowed: torch.Tensor,
    area: torch.Tensor,
    free: torch.Tensor,
    overlap_threshold: Threshold,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """One round of :func:`accept_instances`: the owners under ``accepted`` and the decisions
    they imply. ``allowed``: bool (N,) considered and non-empty; ``area``: int64 (N,) mask areas;
    ``free``: int64 (H * W,) filled with N; ``overlap_threshold``: a number or float64 (N,) by
    rank. Returns (int64 (H * W,) owners, bool (N,))."""
    claims = torch.where(accepted[pairs.ranks], pairs.ranks, len(accepted))
    owner = free.scatter_reduce(0, pairs.pixels, claims, reduce="amin")
    taken = pairs.sums_by_rank((owner[pairs.pixels] < pairs.ranks).long())
    # Detectron2's test in float64, like its Python arithmetic
    return owner, allowed & ~(taken.double() / area.double() > overlap_threshold)


def _stuff_segments(
    owner: torch.Tensor, semantic: torch.Tensor, num: int, stuff_area_limit: Threshold
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Which labels become stuff segments: present, not 0 ("other"), and not fewer free pixels
    than ``stuff_area_limit`` (compared in float64, exact for pixel counts), or than their own
    limit when it is a tensor by label (:func:`~.placement.label_limits`).

    Args:
        owner: int64 (H * W,) from :func:`accept_instances`; N = ``num`` marks a free pixel.
        semantic: int64 (H * W,) labels >= 0.
    Returns:
        free: bool (H * W,) pixels no instance owns.
        is_stuff: bool (L,) by label, L = largest label + 1.
        free_area: int64 (L,) free pixels per label.
    """
    free = owner == num
    counts = torch.bincount(semantic * 2 + free, minlength=2)
    counts = F.pad(counts, (0, counts.numel() % 2)).view(-1, 2)
    free_area = counts[:, 1]
    limits = label_limits(stuff_area_limit, len(free_area))
    if isinstance(limits, torch.Tensor):
        limits = limits.to(free_area.device)
    is_stuff = (counts.sum(dim=1) > 0) & ~(free_area.double() < limits)
    is_stuff[0] = False
    return free, is_stuff, free_area


def combine_parallel(
    masks: torch.Tensor,
    scores: torch.Tensor,
    semantic: torch.Tensor,
    overlap_threshold: Threshold,
    stuff_area_limit: Threshold,
    instances_score_threshold: float,
) -> Tuple[Placement, int]:
    """:func:`~panoptic_fpn_ext.modeling.combine_panoptic` with a fixed number of operators per
    image plus a few per fixed-point round, on the device of ``semantic``.

    Host synchronisations: the mask pixel list, each round's convergence test, the label
    histogram and one transfer of the decisions.

    Args:
        masks: bool (N, H, W), on the device of ``semantic``.
        scores: float (N,), on the device Detectron2 would sort them on.
        semantic: integer (H, W) labels >= 0.
        overlap_threshold, stuff_area_limit: a number, or a tensor by instance (by label), see
            :func:`~.placement.per_instance` and :func:`~.placement.label_limits`.
    Returns:
        the placement (things by rank, then stuff by label) and the number of fixed-point rounds.
    """
    device = semantic.device
    order, rank, considered = _considered_by_rank(scores, instances_score_threshold)
    order, rank, considered = order.to(device), rank.to(device), considered.to(device)
    num, num_pixels = len(order), semantic.numel()
    pairs = mask_pixels(masks, order, rank)
    if isinstance(overlap_threshold, torch.Tensor):
        by_instance = per_instance(overlap_threshold, num).to(device)
        overlap_threshold = by_instance[order]
    accepted, owner, rounds = accept_instances(pairs, considered, num_pixels, overlap_threshold)
    labels = semantic.flatten().long()
    free, is_stuff, free_area = _stuff_segments(owner, labels, num, stuff_area_limit)
    thing_ids = torch.cumsum(accepted, dim=0) * accepted
    stuff_ids = (accepted.sum() + torch.cumsum(is_stuff, dim=0)) * is_stuff
    thing_table = torch.cat([thing_ids, thing_ids.new_zeros(1)])
    panoptic = thing_table[owner] + free * stuff_ids[labels]
    decisions = torch.cat([order, accepted.long(), is_stuff.long(), free_area]).cpu()
    order, keep, is_stuff, free_area = decisions.split([num, num, len(free_area), len(free_area)])
    stuff_labels = is_stuff.nonzero().flatten().tolist()
    placement = Placement(
        panoptic.to(torch.int32).view(semantic.shape),
        order.tolist(),
        keep.bool().tolist(),
        stuff_labels,
        free_area[stuff_labels].tolist(),
    )
    return placement, rounds
