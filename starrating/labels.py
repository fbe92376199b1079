"""The label scheme: 1-5 stars and the class ids a model predicts.

Plain Python on purpose: the gateway reads it without importing torch. The same mapping is
written into every saved model config (``id2label``/``label2id``) by ``save_artifacts``.
"""

from __future__ import annotations

STARS: tuple[int, ...] = (1, 2, 3, 4, 5)
NUM_LABELS = len(STARS)
ID2LABEL: dict[int, str] = {i: str(star) for i, star in enumerate(STARS)}
LABEL2ID: dict[str, int] = {label: i for i, label in ID2LABEL.items()}


def star_to_id(star: int) -> int:
    """Class id of a star rating; raises ``ValueError`` outside 1-5."""
    if isinstance(star, bool) or star not in STARS:
        raise ValueError(f"star rating must be one of {STARS}, got {star!r}")
    return STARS.index(star)


def id_to_star(class_id: int) -> int:
    """Star rating of a class id; raises ``ValueError`` outside 0-4."""
    if not 0 <= class_id < NUM_LABELS:
        raise ValueError(f"class id must be in 0..{NUM_LABELS - 1}, got {class_id!r}")
    return STARS[class_id]
