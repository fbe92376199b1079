"""The durable A/B store: predictions, feedback, shadow answers and the experiment config.

SQLAlchemy 2 over SQLite (default, WAL journal with ``synchronous=FULL`` so an acknowledged
write survives a crash) or PostgreSQL (``postgresql+psycopg://…``).

What is stored: request id, experiment, revision, variant, version, a salted hash of the user id
(``users``: the raw id is never written), predicted stars and probabilities, latency and time.
Never the review text. Failed predictions (TorchServe errors and timeouts, per variant, never
the text) sit in a table of their own, so the error rate per variant exists for the autopilot's
guardrails. So do the autopilot's decisions and its lease (``lease``: one replica decides at a
time). The experiment's ``status`` (running, promoted, rolled back) travels inside each stored
revision's JSON (absent in older rows: running).

One concern per module: ``tables`` (ORM tables, engine, SQLite pragmas), ``records`` (what goes
in and comes out, and the errors), ``users``, ``lease``, ``queries`` (the reads), ``store``
(``ExperimentStore``: the writes and the async facade) and ``migrations`` (the schema, Alembic).
"""

from abtesting.store.records import (
    EXPERIMENT_STATUSES,
    DecisionRecord,
    DuplicateRequest,
    ExperimentStatus,
    FailureRecord,
    FeedbackConflict,
    FeedbackRecord,
    PredictionRecord,
    ShadowPair,
    StoredExperiment,
    StoreError,
    UnknownRequest,
)
from abtesting.store.store import ExperimentStore
from abtesting.store.tables import make_engine

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
