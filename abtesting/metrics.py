"""Per-variant Prometheus metrics of the A/B experiment (the gateway's ``/metrics`` shows them).

Module-level, like ``api.metrics``. Label values stay few: variant names come from the admin's
experiment config (at most 16, plus ``override`` and ``default``), versions are those that
actually answered, stars are 1-5. Accuracy per variant is ``correct / feedback``; MAE is
``absolute_error_stars / feedback``. The Grafana dashboard
``deploy/grafana/dashboards/ab.json`` plots these.
"""

from __future__ import annotations

from prometheus_client import Counter, Histogram

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

AB_REQUESTS = Counter(
    "starrating_ab_requests_total",
    "Answered prediction requests, by experiment variant and the version that answered",
    ["variant", "version"],
)
AB_LATENCY = Histogram(
    "starrating_ab_upstream_duration_seconds",
    "Time TorchServe took to answer, by experiment variant",
    ["variant"],
    buckets=_LATENCY_BUCKETS,
)
AB_PREDICTED_STARS = Counter(
    "starrating_ab_predicted_stars_total",
    "Star ratings predicted, by experiment variant",
    ["variant", "stars"],
)
AB_FEEDBACK = Counter(
    "starrating_ab_feedback_total",
    "True ratings received as feedback, by the variant that made the prediction",
    ["variant"],
)
AB_CORRECT = Counter(
    "starrating_ab_correct_total",
    "Feedback whose true rating equals the predicted one, by variant",
    ["variant"],
)
AB_ABS_ERROR = Counter(
    "starrating_ab_absolute_error_stars",
    "Sum of |predicted - true| stars over feedback, by variant (divide by feedback for MAE)",
    ["variant"],
)
AB_SHADOW = Counter(
    "starrating_ab_shadow_total",
    "Shadow copies by shadow version and outcome (agree, disagree, error, dropped)",
    ["version", "outcome"],
)
AB_FAILED = Counter(
    "starrating_ab_failed_requests_total",
    "Prediction requests TorchServe failed (error or timeout), by variant and error",
    ["variant", "error"],
)
AB_DECISIONS = Counter(
    "starrating_ab_autopilot_decisions_total",
    "Autopilot decisions, by action (ramp, rollback, promote) and mode (on, dry-run)",
    ["action", "mode"],
)
