"""Partial observation (paper §4.1, generalised to M >= 2 modalities): which modalities each example shows.

An observation pattern is one flag per modality. A fraction ``f`` of the examples is fully observed
(``round(f * n)`` exactly, chosen by a seeded permutation); the rest follow the ``observed`` scheme:

* ``<modality>``: only that modality is kept (e.g. ``svhn``: "MEME_SVHN");
* ``split``: each keeps exactly one modality, in equal shares over the modalities (sizes differ by at most
  one; the first modalities take the extra examples), so no two are observed together;
* ``random``: each modality is kept independently with probability ``p_observed``, and at least one is always
  kept (a draw that keeps none is drawn again: the pattern follows the conditional distribution);
* a list of subsets with weights, ``"a+b:2, c:1"`` (``+`` joins the modalities of a subset, ``:w`` is its weight,
  1 when left out): the subsets share the rest in proportion to their weights, exactly (largest remainders;
  ties to the earlier subset). A single name is the list of one subset, and ``split`` is the list of every
  modality alone with equal weights, so all three are one mechanism.

``paired_only=True`` drops the rest (ablation J.2). With two modalities every scheme makes exactly the
examples it made before M modalities (a test holds the numbers of two-modality runs).

``Observation`` keeps the examples of each pattern (sorted), the patterns in a fixed order: the full pattern
first, then by decreasing number of observed modalities, then with the earlier modalities first. ``mask()``
is the same as an (examples x M) boolean matrix.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from meme.config import check_supervision
from meme.errors import MemeError

SCHEMES = ("split", "random")
_EMPTY = torch.empty(0, dtype=torch.long)


def pattern_order(pattern: tuple[bool, ...]) -> tuple:
    return (-sum(pattern), tuple(not o for o in pattern))


@dataclass(frozen=True)
class Observation:
    names: tuple[str, ...]
    #: pattern (one flag per modality) -> the indices of the examples observed that way, sorted; no empty entries
    groups: dict = field(default_factory=dict)

    def __post_init__(self):
        ordered = {p: idx for p, idx in sorted(self.groups.items(), key=lambda kv: pattern_order(kv[0]))
                   if idx.numel()}
        object.__setattr__(self, "groups", ordered)

    @property
    def full(self) -> tuple[bool, ...]:
        return (True,) * len(self.names)

    def of(self, pattern: tuple[bool, ...]) -> Tensor:
        return self.groups.get(tuple(pattern), _EMPTY)

    @property
    def paired(self) -> Tensor:
        """The fully observed examples."""
        return self.of(self.full)

    @property
    def s_only(self) -> Tensor:
        return self.of((True, False)) if len(self.names) == 2 else _EMPTY

    @property
    def t_only(self) -> Tensor:
        return self.of((False, True)) if len(self.names) == 2 else _EMPTY

    @property
    def partial(self) -> int:
        """How many examples miss a modality."""
        return sum(idx.numel() for p, idx in self.groups.items() if not all(p))

    def observing(self, m: int) -> Tensor:
        """The examples that observe modality ``m``: the fully observed ones first, then pattern by pattern."""
        parts = [idx for p, idx in self.groups.items() if p[m]]
        return torch.cat(parts) if parts else _EMPTY

    def keep(self, learns) -> "Observation":
        """Only the patterns ``learns(pattern)`` accepts (a model that cannot learn from some patterns)."""
        return Observation(self.names, {p: idx for p, idx in self.groups.items() if learns(p)})

    def mask(self, n: int) -> Tensor:
        """(n, M) bool: example i observes modality m (an example in no group observes nothing)."""
        out = torch.zeros(n, len(self.names), dtype=torch.bool)
        for p, idx in self.groups.items():
            out[idx] = torch.tensor(p)
        return out

    @classmethod
    def from_mask(cls, names, mask: Tensor) -> "Observation":
        """The observation of an explicit (examples x M) bool mask; rows that observe nothing are left out."""
        mask = torch.as_tensor(mask, dtype=torch.bool)
        if mask.dim() != 2 or mask.shape[1] != len(names):
            raise MemeError(f"an observation mask has one column per modality ({len(names)}), got shape "
                            f"{tuple(mask.shape)}")
        patterns, inverse = torch.unique(mask, dim=0, return_inverse=True)
        return cls(tuple(names), {tuple(bool(v) for v in p): (inverse == i).nonzero().flatten()
                                  for i, p in enumerate(patterns) if bool(p.any())})

    def counts(self) -> dict[str, int]:
        """Examples per pattern, named as runs log them: ``paired``, ``s_only`` and ``t_only`` with two modalities;
        ``paired`` and ``observed_<a+b>`` per partial pattern with more."""
        if len(self.names) == 2:
            return {"paired": self.paired.numel(), "s_only": self.s_only.numel(), "t_only": self.t_only.numel()}
        out = {"paired": self.paired.numel()}
        for p, idx in self.groups.items():
            if not all(p):
                out["observed_" + "+".join(n for n, o in zip(self.names, p) if o)] = idx.numel()
        return out


def check_p_observed(p: float) -> None:
    if not isinstance(p, (int, float)) or isinstance(p, bool) or not (0.0 < float(p) <= 1.0):
        raise MemeError(f"p_observed={p!r} is outside (0, 1]: each modality is kept with this probability "
                        f"(e.g. 0.5)")


def parse_subsets(observed: str, names, where: str = "") -> list[tuple[tuple[bool, ...], float]]:
    """``observed`` (a modality, ``split`` or ``"a+b:2, c"``) as (pattern, weight) pairs; ``random`` is not a
    list. A bad name or weight is a ``MemeError`` naming it and what is valid (``where``: " for dataset X")."""
    names = tuple(names)
    valid = f"valid: {', '.join(names)}, split, random, or subsets with weights such as " \
            f"\"{names[0]}+{names[1]}:2, {names[-1]}:1\""
    if not any(c in observed for c in "+:,") and observed not in (*names, "split"):
        raise MemeError(f"unknown observed {observed!r}{where}; {valid}")
    if observed == "split":
        return [(tuple(i == m for i in range(len(names))), 1.0) for m in range(len(names))]
    out = []
    for part in (p.strip() for p in observed.split(",")):
        subset, _, weight = part.partition(":")
        members = [s.strip() for s in subset.split("+")]
        bad = [s for s in members if s not in names]
        if not part or bad:
            what = f"unknown modality {bad[0]!r}" if bad and bad[0] else "an empty subset"
            raise MemeError(f"observed {observed!r}: {what}; {valid}")
        if len(set(members)) != len(members):
            raise MemeError(f"observed {observed!r}: subset {subset.strip()!r} names a modality twice; {valid}")
        try:
            w = float(weight) if weight.strip() else 1.0
        except ValueError:
            raise MemeError(f"observed {observed!r}: weight {weight.strip()!r} of {subset.strip()!r} is not a number; "
                            f"{valid}") from None
        if not w >= 0 or w == float("inf"):
            raise MemeError(f"observed {observed!r}: weight {w:g} of {subset.strip()!r} must be a finite number >= 0")
        out.append((tuple(n in members for n in names), w))
    if not sum(w for _, w in out) > 0:
        raise MemeError(f"observed {observed!r}: the subset weights sum to {sum(w for _, w in out):g}; they must sum "
                        f"to a positive number")
    return out


def check_observed(observed: str, names, p_observed: float = 0.5, where: str = "") -> None:
    """The one check of an ``observed`` scheme (and ``p_observed``) against a dataset's modality names."""
    check_p_observed(p_observed)
    if observed != "random":
        parse_subsets(observed, names, where)


def shares(n: int, weights: list[float]) -> list[int]:
    """``n`` split in proportion to ``weights``, exactly: floors, then the largest remainders (ties to the earlier)."""
    total = sum(weights)
    exact = [n * w / total for w in weights]
    out = [int(e) for e in exact]
    order = sorted(range(len(weights)), key=lambda i: (-(exact[i] - out[i]), i))
    for i in order[:n - sum(out)]:
        out[i] += 1
    return out


def make_observation(n: int, supervision: float, observed: str, names, paired_only: bool = False, seed: int = 0,
                     p_observed: float = 0.5) -> Observation:
    names = tuple(names)
    check_supervision(supervision)
    check_observed(observed, names, p_observed)
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(n, generator=g)
    n_paired = int(round(supervision * n))
    if n_paired == 0:
        raise MemeError(f"supervision fraction f={supervision} leaves no paired example out of {n}; raise f")
    full = (True,) * len(names)
    paired, rest = perm[:n_paired].sort().values, perm[n_paired:]
    if paired_only or rest.numel() == 0:
        return Observation(names, {full: paired})
    if observed == "random":
        keep = torch.rand(rest.numel(), len(names), generator=g) < p_observed
        while not bool(keep.any(1).all()):
            none = ~keep.any(1)
            keep[none] = torch.rand(int(none.sum()), len(names), generator=g) < p_observed
        rest_obs = Observation.from_mask(names, keep)
        groups = {p: rest[idx].sort().values for p, idx in rest_obs.groups.items()}
        if full in groups:
            groups[full] = torch.cat([paired, groups[full]]).sort().values
        else:
            groups[full] = paired
        return Observation(names, groups)
    subsets = parse_subsets(observed, names)
    groups: dict = {full: paired}
    start = 0
    for (pattern, _), k in zip(subsets, shares(rest.numel(), [w for _, w in subsets])):
        part = rest[start:start + k]
        start += k
        groups[pattern] = torch.cat([groups[pattern], part]).sort().values if pattern in groups else part.sort().values
    return Observation(names, groups)
