"""Campaigns (issue 28, part 1): audience rules over a scoring output, the standing global holdout, keyed-hash
treatment and control arms, the size a lift needs, the lists and the run (no ids in MLflow)."""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from customer_value.campaign import assignment, power
from customer_value.campaign.audience import select_audience
from customer_value.errors import UserError
from customer_value.jobs import campaign as campaign_job
from customer_value.keys import derived_key, secret_key

KEY = b"a test secret"


def _scores(customers: int, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    names = np.array(["Champions", "At risk", "Lost"])
    return pd.DataFrame(
        {
            "customer_id": [f"C{i:06d}" for i in range(customers)],
            "segment": rng.integers(0, 3, customers),
            "churn_probability": rng.uniform(0, 1, customers),
            "clv": rng.lognormal(3, 1, customers),
            "expected_revenue": rng.lognormal(2, 1, customers),
            "as_of": pd.Timestamp("2026-11-30"),
        }
    ).assign(
        segment_name=lambda t: names[t["segment"]],
        purchase_probability=lambda t: 1 - t["churn_probability"],
    )


def test_arms_are_deterministic_keyed_and_near_their_shares() -> None:
    scores = _scores(30_000)
    campaign_key, holdout_key = derived_key(KEY, "campaign:a"), derived_key(KEY, "global-holdout")
    arms = assignment.assign_arms(scores["customer_id"], campaign_key, holdout_key, 0.10, 0.05)
    again = assignment.assign_arms(scores["customer_id"], campaign_key, holdout_key, 0.10, 0.05)
    pd.testing.assert_series_equal(arms, again)  # a rerun gives the same arms
    held = arms == assignment.HOLDOUT
    assert abs(held.mean() - 0.05) < 0.01
    for _, part in arms[~held].groupby(scores["segment_name"]):  # 10,000 per segment
        assert len(part) > 9_000 and abs((part == assignment.CONTROL).mean() - 0.10) < 0.01
    # Another campaign: other arms, the same standing holdout; another secret: other arms altogether.
    other = assignment.assign_arms(
        scores["customer_id"], derived_key(KEY, "campaign:b"), holdout_key, 0.10, 0.05
    )
    assert (other == assignment.HOLDOUT).equals(held)
    assert (other[~held] != arms[~held]).mean() > 0.1
    stranger = assignment.assign_arms(
        scores["customer_id"],
        derived_key(b"guess", "campaign:a"),
        derived_key(b"guess", "global-holdout"),
        0.1,
        0.05,
    )
    assert (stranger != arms).mean() > 0.1


def test_audience_rules_or_between_and_within() -> None:
    scores = _scores(3_000)
    rules = [
        {"name": "champions", "segments": ["Champions"]},
        {"segments": ["At risk"], "top": {"clv": 0.1}},
        {"where": {"churn_probability": {"min": 0.99}}},
    ]
    audience = select_audience(scores, rules, "scores.parquet")
    at_risk = scores[scores["segment_name"] == "At risk"]
    top_decile = at_risk.nlargest(math.ceil(0.1 * len(at_risk)), "clv")["customer_id"]
    expected = (
        set(scores.loc[scores["segment_name"] == "Champions", "customer_id"])
        | set(top_decile)
        | set(scores.loc[scores["churn_probability"] >= 0.99, "customer_id"])
    )
    assert set(audience["customer_id"]) == expected
    assert (audience.loc[audience["segment_name"] == "Champions", "rule"] == "champions").all()
    assert set(audience["rule"]) == {"champions", "rule 1", "rule 2"}
    with pytest.raises(
        UserError, match=r"scores.parquet: campaign.audience\[0\] names segment\(s\) \['Loyal'\]"
    ):
        select_audience(scores, [{"segments": ["Loyal"]}], "scores.parquet")
    with pytest.raises(UserError, match="uses column 'margin', not in the scoring output"):
        select_audience(scores, [{"top": {"margin": 0.1}}], "scores.parquet")
    with pytest.raises(UserError, match="unknown key"):
        select_audience(scores, [{"segment": ["Champions"]}], "scores.parquet")
    for rule, said in (
        ({"segments": "Champions"}, r"segments must be a list"),
        ({"where": {"clv": 5}}, r"where.clv must be \{min: x, max: y\}"),
        ({"where": {"clv": {"min": "a lot"}}}, r"where.clv.min must be a number"),
        ({"top": {"clv": "abc"}}, r"top.clv must be a share"),
    ):
        with pytest.raises(UserError, match=said):
            select_audience(scores, [rule], "scores.parquet")


def test_sample_size_matches_the_textbook_and_inverts() -> None:
    """Two proportions 10 % -> 12 %, equal arms, two-sided 5 %, power 80 %: 3,841 per arm (Fleiss,
    without continuity correction)."""
    total = power.required_customers(0.10, 0.20, control_share=0.5)
    assert total / 2 == pytest.approx(3_841, rel=0.005)
    # A 10 % control needs more customers in all than equal arms.
    assert power.required_customers(0.10, 0.20, control_share=0.1) > total
    lift = power.detectable_lift(20_000, 0.10, 0.1)
    assert (
        power.required_customers(0.10, lift, 0.1) <= 20_000 < power.required_customers(0.10, 0.97 * lift, 0.1)
    )
    assert math.isinf(power.required_customers(0.0, 0.2, 0.1))


def test_the_secret_comes_from_the_environment_or_a_private_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CAMPAIGN_KEY", raising=False)
    path = tmp_path / "secrets" / "campaign.key"
    first = secret_key("CAMPAIGN_KEY", path)
    assert path.stat().st_mode & 0o777 == 0o600 and secret_key("CAMPAIGN_KEY", path) == first
    monkeypatch.setenv("CAMPAIGN_KEY", "from-env")
    assert secret_key("CAMPAIGN_KEY", path) == b"from-env"
    monkeypatch.delenv("CAMPAIGN_KEY")
    path.chmod(0o644)
    with pytest.raises(UserError, match="readable by others"):
        secret_key("CAMPAIGN_KEY", path)


def test_make_campaign_writes_the_lists_and_logs_aggregates_only(
    tracking_uri: str, tmp_path: Path, job, monkeypatch: pytest.MonkeyPatch
) -> None:
    scores = _scores(12_000)
    path = tmp_path / "scores.parquet"
    scores.to_parquet(path, index=False)
    monkeypatch.delenv("CAMPAIGN_KEY", raising=False)
    args = [
        f"campaign.scores={path}",
        "campaign.id=spring",
        f"campaign.output_dir={tmp_path / 'campaigns'}",
        f"campaign.key_file={tmp_path / 'key'}",
        "campaign.audience=[{segments: [Champions, At risk]}]",
        "campaign.power.relative_lift=0.05",
    ]
    done = job(campaign_job.main, args, tmp_path, tracking_uri)
    assert done.returncode == 0, done.stderr[-3000:]
    folder = tmp_path / "campaigns" / "spring"
    lists = {p.relative_to(folder).as_posix() for p in folder.rglob("*.csv")}
    assert lists == {f"{arm}/{s}.csv" for arm in ("treatment", "control") for s in ("champions", "at_risk")}
    listed = pd.concat([pd.read_parquet(p) for p in folder.rglob("*.parquet")])
    assert list(listed.columns) == ["customer_id", "segment", "arm", "campaign_id"]
    assert listed["customer_id"].is_unique and (listed["campaign_id"] == "spring").all()
    audience = scores[scores["segment_name"].isin(["Champions", "At risk"])]
    key = secret_key("CAMPAIGN_KEY", tmp_path / "key")
    held = assignment.positions(audience["customer_id"], derived_key(key, "global-holdout")) < 0.05
    assert set(listed["customer_id"]) == set(audience.loc[~held, "customer_id"])  # the holdout: in no list
    csv = pd.read_csv(folder / "control" / "champions.csv", dtype=str)
    assert set(csv["customer_id"]) == set(
        listed.loc[(listed.arm == "control") & (listed.segment == "Champions"), "customer_id"]
    )
    # Too few customers for a +5 % lift: said in one line per group, and still written.
    said = (
        r"campaign: the audience has [\d,]+ customers in treatment and control; "
        r"detecting a \+5% lift on a \d+\.\d% purchase rate needs [\d,]+"
    )
    assert re.search(said, done.stdout), done.stdout
    # A rerun gives the same lists.
    before = {p: p.read_bytes() for p in folder.rglob("*.csv")}
    again = job(campaign_job.main, args, tmp_path, tracking_uri)
    assert again.returncode == 0 and {p: p.read_bytes() for p in folder.rglob("*.csv")} == before
    # The run: definition, sizes and expected value per arm; no customer id anywhere in it.
    client = MlflowClient(tracking_uri)
    experiment = client.get_experiment_by_name("customer-campaigns")
    run = client.search_runs([experiment.experiment_id], max_results=1)[0]
    assert run.data.tags["campaign.id"] == "spring" and run.info.status == "FINISHED"
    assert run.data.metrics["arm.control.customers"] == (listed["arm"] == "control").sum()
    assert run.data.metrics["audience.customers"] == len(audience)
    assert run.data.metrics["power.enough"] == 0.0
    texts = [str(run.data.params), str(run.data.metrics), str(run.data.tags)]
    artifacts = Path(run.info.artifact_uri.removeprefix("file://"))
    texts += [p.read_text() for p in artifacts.rglob("*") if p.is_file()]
    assert not any(customer in text for text in texts for customer in audience["customer_id"].head(200))
    # A rerun with a narrower audience replaces the folder whole: no stale At risk list stays behind.
    narrower = [
        a if not a.startswith("campaign.audience=") else "campaign.audience=[{segments: [Champions]}]"
        for a in args
    ]
    assert job(campaign_job.main, narrower, tmp_path, tracking_uri).returncode == 0
    assert {p.relative_to(folder).as_posix() for p in folder.rglob("*.csv")} == {
        "treatment/champions.csv",
        "control/champions.csv",
    }
    assert not list((tmp_path / "campaigns").glob(".spring*"))  # no staging or previous folder left


def test_bad_campaign_input_is_one_line(tracking_uri: str, tmp_path: Path, job) -> None:
    done = job(campaign_job.main, [f"campaign.scores={tmp_path / 'none.parquet'}"], tmp_path, tracking_uri)
    assert done.returncode == 1 and done.stderr.strip() == (
        f"error: campaign.scores {tmp_path / 'none.parquet'}: no such file (make score writes one)"
    )
    scores = tmp_path / "scores.parquet"
    _scores(100).to_parquet(scores, index=False)
    nobody = ["campaign.audience=[{where: {churn_probability: {min: 2}}}]", f"campaign.scores={scores}"]
    done = job(campaign_job.main, nobody, tmp_path, tracking_uri)
    assert done.returncode == 1 and done.stderr.strip() == (
        f"error: campaign.scores {scores}: no customer matches campaign.audience's rules"
    )
    done = job(campaign_job.main, ["campaign.control_share=1.5"], tmp_path, tracking_uri)
    assert done.returncode == 1 and "campaign.control_share must be in (0, 1), got 1.5" in done.stderr
    assert not (tmp_path / "campaigns").exists()
