"""Models registered by the code of before the stage subpackages still load and score with today's code.

The old code is the commit before the move, taken from this clone's history (``git archive``): it trains and
registers both models into a temporary store in its own process, then today's ``score`` job scores with
them and must give the same table the old code's ``score`` gives.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pandas as pd
import pytest
from hydra import compose, initialize_config_dir

from customer_value.jobs.score import score
from customer_value.schema import register_configs
from test_end_to_end import PLUMBING_ONLY

PROJECT_ROOT = Path(__file__).resolve().parents[1]
BEFORE_THE_MOVE = "130b8bd"  # the last commit with the flat layout (src/customer_value/*.py)
pytestmark = pytest.mark.slow


def _old_checkout(folder: Path) -> Path:
    try:
        archive = subprocess.run(
            ["git", "-C", str(PROJECT_ROOT), "archive", "--format=tar", BEFORE_THE_MOVE, "src", "conf"],
            capture_output=True,
            check=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError) as exc:  # a shallow clone or an exported tree
        pytest.fail(f"needs the git history holding {BEFORE_THE_MOVE}: {exc}")
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(folder, filter="data")
    assert (folder / "src/customer_value/pyfunc_models.py").exists()  # really the flat layout
    return folder


def _run_old(module: str, args: list[str], cwd: Path, uri: str, old_src: Path) -> None:
    env = os.environ | {"MLFLOW_TRACKING_URI": uri, "PYTHONPATH": str(old_src)}
    result = subprocess.run(
        [sys.executable, "-m", module, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr[-3000:]


def test_a_version_registered_before_the_move_scores_the_same_today(
    orders_csv: Path, tracking_uri: str, tmp_path: Path
) -> None:
    old_src = _old_checkout(tmp_path / "old") / "src"
    data = ["data=file", f"data.path={orders_csv}", f"tracking.uri={tracking_uri}"]
    # What the registered models hold is the point, not the evaluation-only work (keys of the old config
    # too); the intervals stay, so the old and today's scores compare their columns as well.
    # tracking.plots is newer than the old code (its config refuses unknown keys)
    quick = [o for o in PLUMBING_ONLY if not o.startswith(("clv.intervals.", "tracking.plots"))]
    train = [*data, f"tracking.artifact_root={tmp_path / 'artifacts'}", *quick]
    _run_old("customer_value.train", train, tmp_path, tracking_uri, old_src)

    old_scores = tmp_path / "old.parquet"
    _run_old("customer_value.score", [*data, f"score.output={old_scores}"], tmp_path, tracking_uri, old_src)

    today_scores = tmp_path / "today.parquet"
    register_configs()
    with initialize_config_dir(config_dir=str(PROJECT_ROOT / "conf"), version_base="1.3"):
        score(compose(config_name="score", overrides=[*data, f"score.output={today_scores}"]))
    # Today's classes answered for the old names: the old entry file and pickle went through legacy.py.
    assert sys.modules["customer_value.pyfunc_models"] is sys.modules["customer_value.tracking.pyfunc"]
    assert (
        sys.modules["customer_value.segmentation"]
        is sys.modules["customer_value.models.segments.segmentation"]
    )
    today = pd.read_parquet(today_scores)
    assert len(today) == 800 and today["segment_name"].notna().all()
    old = pd.read_parquet(old_scores)
    pd.testing.assert_frame_equal(today[old.columns], old)
    # Today's code also explains the old model's segments (the columns it adds: issue 29's reasons).
    added = [c for c in today.columns if c not in old.columns]
    assert added[:5] == ["segment_margin", "runner_up_segment", "reason_1", "reason_2", "reason_3"]
    parts = [c for c in added if c.startswith("margin_part.")]
    assert parts and set(added) == {*added[:5], *parts}
    assert ((today[parts].sum(axis=1) - today["segment_margin"]).abs() < 1e-9).all()
