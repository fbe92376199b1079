"""The `.mar` archive: what `starrating archive` writes, and that the handler runs from it alone."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cli import app
from training.archive import archive_run

# Run in an interpreter that sees only the unpacked archive and the third-party packages (no
# site hooks, so not the project's editable install): what a TorchServe worker sees where
# starrating is not installed. It loads the handler the way TorchServe does and predicts once.
HANDLER_FROM_ARCHIVE = """
import json, sys
from pathlib import Path
import ts, yaml
from ts.context import Context, RequestProcessor
from ts.metrics.metric_cache_yaml_impl import MetricsCacheYamlImpl
import star_handler, starrating, handlers

root = Path(sys.argv[1])
loaded = {name: module.__file__ for name, module in sys.modules.items()
          if name.split(".")[0] in {"starrating", "handlers", "star_handler"}}
manifest = json.loads((root / "MAR-INF" / "MANIFEST.json").read_text())
config = yaml.safe_load((root / manifest["model"]["configFile"]).read_text())
metrics_yaml = Path(ts.__file__).parent / "configs" / "metrics.yaml"
metrics = MetricsCacheYamlImpl(config_file_path=str(metrics_yaml))
metrics.initialize_cache()
context = Context("stars", str(root), manifest, 1, None, "0.12.0", metrics=metrics,
                  model_yaml_config=config)
context.request_ids = {0: "req-0"}
metrics.request_ids = context.request_ids
context.request_processor = [RequestProcessor({})]
handler = star_handler.StarHandler()
handler.initialize(context)
answers = handler.handle([{"body": {"text": "I loved it!"}}], context)
print(json.dumps({"loaded": loaded, "answers": answers}))
"""


@pytest.fixture
def run(tiny_model_dir: Path, tmp_path: Path) -> Path:
    """A run directory as `starrating train` leaves it, with the tiny model."""
    run = tmp_path / "run"
    shutil.copytree(tiny_model_dir, run / "model")
    return run


def test_the_handler_loads_and_predicts_from_the_unpacked_archive_alone(
    run: Path, tmp_path: Path
) -> None:
    mar = archive_run(run, "1.0", tmp_path / "store").path
    unpacked = tmp_path / "unpacked"
    with zipfile.ZipFile(mar) as archive:
        archive.extractall(unpacked)
        names = set(archive.namelist())
    shipped = {n for n in names if n.endswith(".py")}
    assert shipped == {
        "star_handler.py",
        *(
            f"handlers/{m}.py"
            for m in ("__init__", "batch", "config", "explain", "numerics", "star_handler")
        ),
        *(
            f"starrating/{m}.py"
            for m in ("__init__", "artifacts", "cpus", "labels", "service", "text")
        ),
    }

    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(unpacked), sysconfig.get_paths()["purelib"]]),
    }
    result = subprocess.run(
        [sys.executable, "-S", "-c", HANDLER_FROM_ARCHIVE, str(unpacked)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["loaded"] and all(
        Path(path).is_relative_to(unpacked) for path in report["loaded"].values()
    ), report["loaded"]
    [answer] = report["answers"]
    assert answer["stars"] in {1, 2, 3, 4, 5}
    assert abs(sum(answer["probabilities"].values()) - 1) < 1e-4


def test_the_archive_measures_each_numerics_on_the_runs_validation_split(
    run: Path, tiny_data_dir: Path, tmp_path: Path
) -> None:
    (run / "config.json").write_text(json.dumps({"out": str(run), "data": str(tiny_data_dir)}))
    result = archive_run(run, "1.0", tmp_path / "store")
    with zipfile.ZipFile(result.path) as archive:
        stored = json.loads(archive.read("run/numerics.json"))
    validation_rows = sum(1 for _ in (tiny_data_dir / "validation.jsonl").open())
    assert stored == result.numerics.to_json()
    assert stored["requested"] == "auto"
    assert stored["rows"] == validation_rows and stored["split"] == "validation.jsonl"
    assert set(stored["accuracy"]) == {"fp32", "bf16", "int8"}
    assert all(0.0 <= value <= 1.0 for value in stored["accuracy"].values())
    # Every numerics is either kept (within half a point of fp32) or refused with a reason.
    assert "fp32" in stored["kept"]
    for name in ("bf16", "int8"):
        change = 100 * (stored["accuracy"][name] - stored["accuracy"]["fp32"])
        within = change >= -0.5 and 100 * stored["changed"][name] <= 0.5
        assert (name in stored["kept"]) == within, stored
        assert (name in stored["refused"]) == (not within), stored


def test_an_archive_without_a_validation_split_serves_fp32_and_says_why(
    run: Path, tmp_path: Path
) -> None:
    numerics = archive_run(run, "1.0", tmp_path / "store").numerics
    assert numerics.kept == ("fp32",) and not numerics.accuracy
    assert all("no validation split" in why for why in numerics.refused.values())
    explicit = archive_run(run, "2.0", tmp_path / "store", precision="bf16").numerics
    assert explicit.requested == "bf16"


def test_archive_command_writes_a_mar_and_refuses_to_overwrite(run: Path, tmp_path: Path) -> None:
    (run / "metrics.json").write_text(json.dumps({"accuracy": 0.4}))
    store = tmp_path / "store"
    args = ["archive", "--run", str(run), "--version", "1.0", "--model-store", str(store)]
    runner = CliRunner()

    first = runner.invoke(app, args)
    assert first.exit_code == 0, first.output
    mar = store / "stars-1.0.mar"
    with zipfile.ZipFile(mar) as archive:
        names = set(archive.namelist())
        manifest = json.loads(archive.read("MAR-INF/MANIFEST.json"))
    assert manifest["model"] == {
        "modelName": "stars",
        "handler": "star_handler.py",
        "modelVersion": "1.0",
        "configFile": "model-config.yaml",
    }
    assert {
        "star_handler.py",
        "model-config.yaml",
        "model/config.json",
        "starrating/text.py",
        "starrating/artifacts.py",
        "handlers/batch.py",
        "run/metrics.json",
    } <= names
    assert not any(n.startswith("cli/") or "__pycache__" in n for n in names)

    again = runner.invoke(app, args)
    assert again.exit_code == 2 and "--force" in again.output
    forced = runner.invoke(app, [*args, "--force"])
    assert forced.exit_code == 0, forced.output
    # The command says what it measured and what auto may serve.
    assert "numerics auto" in " ".join(forced.output.split())


def test_archive_command_explains_bad_input(tmp_path: Path) -> None:
    runner = CliRunner()
    no_model = runner.invoke(app, ["archive", "--run", str(tmp_path), "--version", "1.0"])
    assert no_model.exit_code == 2
    assert "no loadable model" in " ".join(no_model.output.split())
    bad_version = runner.invoke(app, ["archive", "--run", str(tmp_path), "--version", "../x"])
    assert bad_version.exit_code == 2
    assert "must be 1-64 letters" in " ".join(bad_version.output.split())
    bad_precision = runner.invoke(
        app, ["archive", "--run", str(tmp_path), "--version", "1.0", "--precision", "fp8"]
    )
    assert bad_precision.exit_code == 2
    assert "--precision must be one of auto, fp32, bf16, int8" in bad_precision.output
