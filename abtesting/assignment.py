"""Sticky, stateless assignment: ``ExperimentRouter`` puts each request in a variant.

sha256(experiment name, user id) maps a user to a point in [0, 1) and the cumulative weights map
the point to a variant, so every gateway replica (and the same replica after a restart) puts a
user in the same variant without sharing any state. Requests without a user id, or with
``sticky`` off, draw a fresh point per request. A client's ``X-Model-Version`` wins over the
split and is counted apart, as variant ``override``.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import accumulate

from abtesting.experiment import OVERRIDE_VARIANT, ExperimentConfig, VariantConfig
from abtesting.store import ExperimentStatus, ExperimentStore
from api.seams import Assignment, DefaultChooser


@dataclass(frozen=True)
class ExperimentAssignment(Assignment):
    """An assignment made by the experiment, with the config revision it was made under."""

    revision: int | None = None


def unit_point(experiment: str, user_id: str) -> float:
    """The user's fixed point in [0, 1) for this experiment (53 bits of sha256)."""
    digest = hashlib.sha256(f"{experiment}\x00{user_id}".encode()).digest()
    return (int.from_bytes(digest[:8], "big") >> 11) / float(1 << 53)


@dataclass(frozen=True)
class _Split:
    config: ExperimentConfig
    revision: int
    bounds: tuple[float, ...]  # cumulative weights / total: variant i covers [b[i-1], b[i])
    status: ExperimentStatus = "running"


class ExperimentRouter:
    """Implements ``api.seams.VariantChooser`` for an experiment (or none: the default)."""

    def __init__(
        self,
        config: ExperimentConfig | None = None,
        revision: int = 0,
        rng: random.Random | None = None,
    ) -> None:
        self._rng = rng or random.Random()
        self._split: _Split | None = None
        if config is not None:
            self.update(config, revision)

    @property
    def config(self) -> ExperimentConfig | None:
        return None if self._split is None else self._split.config

    @property
    def revision(self) -> int | None:
        return None if self._split is None else self._split.revision

    @property
    def status(self) -> ExperimentStatus:
        """running, promoted or rolled_back (set by the autopilot)."""
        return "running" if self._split is None else self._split.status

    def update(
        self, config: ExperimentConfig, revision: int, status: ExperimentStatus = "running"
    ) -> None:
        """Switch to a new config (one reference swap: requests in flight keep the old one)."""
        total = sum(v.weight for v in config.variants)
        bounds = tuple(w / total for w in accumulate(v.weight for v in config.variants))
        self._split = _Split(config, revision, bounds, status)

    def reload(self, store: ExperimentStore) -> bool:
        """Take the store's latest config if it is newer (blocking: call on a worker thread)."""
        latest = store.latest_experiment()
        if latest is None or (self.revision is not None and latest.revision <= self.revision):
            return False
        self.update(ExperimentConfig.model_validate(latest.config), latest.revision, latest.status)
        return True

    def choose(self, user_id: str | None, forced_version: str | None) -> Assignment:
        split = self._split
        if split is None:
            return DefaultChooser().choose(user_id, forced_version)
        name = split.config.name
        if forced_version is not None:
            return ExperimentAssignment(OVERRIDE_VARIANT, forced_version, name, split.revision)
        if user_id is not None and split.config.sticky:
            point = unit_point(name, user_id)
        else:
            point = self._rng.random()
        variant = self._variant_at(split, point)
        return ExperimentAssignment(variant.name, variant.version, name, split.revision)

    def served_versions(self) -> Sequence[str | None]:
        split = self._split
        if split is None:
            return DefaultChooser().served_versions()
        return sorted({v.version for v in split.config.variants if v.weight > 0})

    def wants_shadow(self) -> str | None:
        """The shadow version if this request is sampled for a shadow copy, else None."""
        split = self._split
        shadow = None if split is None else split.config.shadow
        if shadow is None or self._rng.random() >= shadow.sample:
            return None
        return shadow.version

    @staticmethod
    def _variant_at(split: _Split, point: float) -> VariantConfig:
        for variant, bound in zip(split.config.variants, split.bounds, strict=True):
            if point < bound:  # a weight-0 variant has an empty range and is never picked
                return variant
        # Float rounding can leave the last bound a hair below 1: the last weighted variant.
        return [v for v in split.config.variants if v.weight > 0][-1]
