"""The durable A/B store (``store``), imported as ``abtesting.store``."""

from abtesting.store.store import (
    EXPERIMENT_STATUSES,
    DecisionRecord,
    DuplicateRequest,
    ExperimentStatus,
    ExperimentStore,
    FailureRecord,
    FeedbackConflict,
    FeedbackRecord,
    PredictionRecord,
    ShadowPair,
    StoredExperiment,
    StoreError,
    UnknownRequest,
    make_engine,
)

__all__ = [
    "EXPERIMENT_STATUSES",
    "DecisionRecord",
    "DuplicateRequest",
    "ExperimentStatus",
    "ExperimentStore",
    "FailureRecord",
    "FeedbackConflict",
    "FeedbackRecord",
    "PredictionRecord",
    "ShadowPair",
    "StoreError",
    "StoredExperiment",
    "UnknownRequest",
    "make_engine",
]
