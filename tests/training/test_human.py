"""The human ceiling: single-rater and half-panel agreement on hand-checked ratings, and where it
is reported (``starrating evaluate``, the run summary)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from cli import app
from starrating.settings import CoreSettings
from training.config import TrainConfig
from training.data import embedded
from training.evaluate import Predictions
from training.human import (
    distribution_agreement,
    human_agreement,
    rating_stars,
    split_human_agreement,
)
from training.report import add_human_agreement

runner = CliRunner()


def test_single_ratings_map_to_stars_by_the_label_cut_points() -> None:
    ratings = np.array([-4, -3, -2, -1, 0, 1, 2, 3, 4], dtype=float)
    assert rating_stars(ratings).tolist() == [1, 1, 2, 2, 3, 4, 5, 5, 5]
    assert rating_stars(np.array([-2.01, 0.49, 1.99])).tolist() == [1, 3, 4]


def test_unanimous_raters_agree_on_every_star() -> None:
    human = human_agreement([[2] * 20, [-1] * 20])
    assert human is not None
    assert human["single_rater"] == {"accuracy": 1.0, "mae": 0.0}
    assert (human["half_panel"]["accuracy"], human["half_panel"]["mae"]) == (1.0, 0.0)
    assert human["n"] == 2 and human["raters"] == {"min": 20, "max": 20}


def test_one_dissenting_rater() -> None:
    # Raters say 3, 3, 3, 5 stars. Each "0" rater against the others' mean (4/3 -> 4 stars) is
    # one star off; the "4" rater (5 stars) against the others' mean (0 -> 3 stars), two.
    human = human_agreement([[0, 0, 0, 4]])
    assert human is not None
    assert human["single_rater"]["accuracy"] == 0.0
    assert human["single_rater"]["mae"] == pytest.approx((1 + 1 + 1 + 2) / 4)


def test_two_opposed_raters_never_agree_as_half_panels() -> None:
    human = human_agreement([[-4, 4]])
    assert human is not None
    assert (human["half_panel"]["accuracy"], human["half_panel"]["mae"]) == (0.0, 4.0)


def test_half_panels_average_over_seeded_random_splits() -> None:
    # Halves of [0, 0, 2, 2]: {0,0} vs {2,2} (3 vs 5 stars) in 2 of the 6 splits, else 4 vs 4.
    human = human_agreement([[0, 0, 2, 2]], splits=6000, seed=1)
    assert human is not None
    assert human["half_panel"]["accuracy"] == pytest.approx(4 / 6, abs=0.02)
    assert human["half_panel"]["mae"] == pytest.approx(2 * 2 / 6, abs=0.04)
    assert human_agreement([[0, 0, 2, 2]], seed=1) == human_agreement([[0, 0, 2, 2]], seed=1)


def test_no_agreement_without_two_ratings_of_a_sentence() -> None:
    assert human_agreement([]) is None
    assert human_agreement([[3]]) is None
    partly = human_agreement([[3], [1, 1]])
    assert partly is not None and partly["n"] == 1


def test_model_probabilities_against_the_raters_distribution() -> None:
    raters = [[0.0, 0.0, 0.5, 0.5, 0.0], [1.0, 0.0, 0.0, 0.0, 0.0], None]
    same = distribution_agreement(np.array([*raters[:2], [0.2] * 5]), raters)
    assert same == {"n": 2, "brier": 0.0, "kl": 0.0}  # the row without raters is left out
    uniform = distribution_agreement(np.full((3, 5), 0.2), raters)
    assert uniform is not None
    # Brier: 2 x 0.3^2 + 3 x 0.2^2 = 0.3, and 0.8^2 + 4 x 0.2^2 = 0.8; KL: log 2.5 and log 5.
    assert uniform["brier"] == pytest.approx((0.3 + 0.8) / 2)
    assert uniform["kl"] == pytest.approx((np.log(2.5) + np.log(5)) / 2)
    assert distribution_agreement(np.full((3, 5), 0.2), [None] * 3) is None


def _write_split(path: Path, rows: list[dict[str, object]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_a_split_without_ratings_has_no_human_block(tmp_path: Path) -> None:
    plain = _write_split(tmp_path / "test.jsonl", [{"text": "fine", "stars": 3}] * 3)
    assert split_human_agreement([plain]) is None


def test_evaluate_reports_the_humans_beside_the_model(tmp_path: Path, tiny_model_dir: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(tiny_model_dir, run / "model")
    rows = [
        {"text": "great product", "stars": 5, "ratings": [3, 3, 2, 4]},
        {"text": "it broke", "stars": 1, "ratings": [-4, -3, -3, -4]},
        {
            "text": "so so",
            "stars": 3,
            "ratings": [0, 0, 0, 4],
            "distribution": [0, 0, 0.75, 0, 0.25],
        },
    ]
    _write_split(tmp_path / "test.jsonl", rows)
    result = runner.invoke(app, ["evaluate", "--run", str(run), "--data", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "· rater" in result.output and "· panel" in result.output
    metrics = json.loads((run / "evaluation" / "test-metrics.json").read_text())
    assert metrics["n"] == 3
    assert metrics["human"]["n"] == 3
    # Two unanimous sentences and the dissent above: (1 + 1 + 0) / 3 single-rater agreement.
    assert metrics["human"]["single_rater"]["accuracy"] == pytest.approx(2 / 3)
    assert metrics["rater_distribution"]["n"] == 1  # the one row that carries its distribution
    assert 0 < metrics["rater_distribution"]["brier"] < 2


def test_the_run_summary_carries_the_humans_of_its_splits(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    row = {"text": "a", "stars": 3, "ratings": [0, 0, 0, 4], "distribution": [0, 0, 0.75, 0, 0.25]}
    _write_split(data / "test.jsonl", [row])
    _write_split(data / "validation.jsonl", [{"text": "b", "stars": 3}])
    run = tmp_path / "run"
    TrainConfig(out=run, data=data).save(run / "config.json")
    summary: dict[str, object] = {"split": "test", "validation": {}}
    logits = np.log(np.array([[1e-9, 1e-9, 0.75, 1e-9, 0.25]], dtype=np.float32))
    final = Predictions(index=np.arange(1), logits=logits, labels=np.array([2]))
    add_human_agreement(run, summary, final)
    human = summary["human"]
    assert isinstance(human, dict) and human["single_rater"]["accuracy"] == 0.0
    raters = summary["rater_distribution"]
    assert isinstance(raters, dict) and raters["brier"] == pytest.approx(0.0, abs=1e-6)
    assert summary["validation"] == {}  # its rows carry no ratings


def _cached_amazon_ratings() -> Path:
    cache = CoreSettings().cache_dir
    if not (cache / "embedded" / embedded.AMAZON.ratings.name).is_file():
        pytest.skip("the embedded archive is not cached here (starrating data prepare fetches it)")
    return cache


def test_agreement_on_the_real_amazon_ratings() -> None:
    """On all 3,708 Amazon sentences (20 raters each): one rater matches the others' star about
    two times in three, a 10-rater panel another such panel about five times in six."""
    ratings = embedded.read_ratings(_cached_amazon_ratings())
    assert len(ratings) == 3708 and {len(r) for r in ratings.values()} == {20}
    human = human_agreement(list(ratings.values()))
    assert human is not None
    assert human["single_rater"]["accuracy"] == pytest.approx(0.671, abs=0.002)
    assert human["single_rater"]["mae"] == pytest.approx(0.360, abs=0.002)
    assert human["half_panel"]["accuracy"] == pytest.approx(0.832, abs=0.005)
    assert human["half_panel"]["mae"] == pytest.approx(0.168, abs=0.005)
