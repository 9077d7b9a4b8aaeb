"""The position-based click model the simulator's users follow.

A listing shown at rank r is examined with probability ``(1 / r) ** eta`` (users look at the top of a page
more than the bottom: position bias), and an examined listing is clicked with its attractiveness to the user.
So clicks depend on rank even for equally good listings, as logged clicks do in a real marketplace, and a
model trained on them has to deal with that bias (Craswell et al. 2008; Chuklin, Markov and de Rijke,
"Click Models for Web Search", 2015).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class PositionBasedModel:
    eta: float = 0.9  # steepness of the position bias; 0 means every rank is examined

    def examination(self, ranks: np.ndarray) -> np.ndarray:
        """P(examined) of 1-based ``ranks`` on a page."""
        return (1.0 / np.asarray(ranks, dtype=np.float64)) ** self.eta

    def clicks(self, attractiveness: np.ndarray, ranks: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Boolean (n,): which of the listings shown at ``ranks`` are clicked."""
        attractiveness = np.asarray(attractiveness, dtype=np.float64)
        examined = rng.random(len(attractiveness)) < self.examination(ranks)
        return examined & (rng.random(len(attractiveness)) < attractiveness)
