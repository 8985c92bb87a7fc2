"""Build the example job's source table and model, or show what the view serves.

    python jobs/example_data.py --db sqlite:///predictions.db          # customers table (+ models/churn.joblib)
    python jobs/example_data.py --db sqlite:///predictions.db --seed 2 # a retrained model, same customers
    python jobs/example_data.py --db sqlite:///predictions.db --show   # read churn_scores back with SQL

Everything is generated here (no download): a fixed random customer base and a
gradient-boosting classifier fitted on labels drawn from a known churn rule. The model is
trained when --seed is given or none exists yet (seed 1): building the table in another
database keeps the model the job scores with.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import joblib
import numpy as np
import pandas as pd
from sklearn.ensemble import HistGradientBoostingClassifier
from sqlalchemy import text

from pipeline.database.engines import make_engine, redact

HERE = Path(__file__).resolve().parent
MODEL = HERE / "models" / "churn.joblib"
FEATURES = ["tenure_months", "monthly_charges", "support_calls", "contract_months"]


def customers(n: int = 5000, seed: int = 7) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame({
        "customer_id": np.arange(1, n + 1),
        "tenure_months": rng.integers(1, 72, n),
        "monthly_charges": rng.normal(70, 25, n).clip(10, 200).round(2),
        "support_calls": rng.poisson(1.5, n),
        "contract_months": rng.choice([1, 12, 24], n),
    })


def train(frame: pd.DataFrame, seed: int) -> HistGradientBoostingClassifier:
    rng = np.random.default_rng(seed)
    logit = (-1.5 - 0.04 * frame.tenure_months + 0.02 * frame.monthly_charges + 0.5 * frame.support_calls
             - 0.05 * frame.contract_months)
    churned = rng.random(len(frame)) < 1 / (1 + np.exp(-logit))
    return HistGradientBoostingClassifier(max_iter=50, random_state=seed).fit(frame[FEATURES], churned)


def build(db: str, seed: int | None) -> None:
    frame = customers()
    engine = make_engine(db)
    with engine.begin() as conn:
        conn.execute(text("DROP TABLE IF EXISTS customers"))
        conn.execute(text("CREATE TABLE customers (customer_id BIGINT PRIMARY KEY, tenure_months INTEGER, "
                          "monthly_charges DOUBLE PRECISION, support_calls INTEGER, contract_months INTEGER)"))
        conn.execute(text("INSERT INTO customers VALUES (:customer_id, :tenure_months, :monthly_charges, "
                          ":support_calls, :contract_months)"), frame.to_dict("records"))
    engine.dispose()
    if seed is None and MODEL.exists():
        print(f"customers: {len(frame)} rows in {redact(db)}; model kept: {MODEL} (--seed N trains another)")
        return
    MODEL.parent.mkdir(exist_ok=True)
    joblib.dump(train(frame, seed or 1), MODEL)
    print(f"customers: {len(frame)} rows in {redact(db)}; model (seed {seed or 1}): {MODEL}")


def show(db: str) -> None:
    engine = make_engine(db)
    query = "SELECT customer_id, proba_true, model_version FROM churn_scores ORDER BY customer_id LIMIT 5"
    with engine.connect() as conn:
        rows = conn.execute(text(query)).all()
        total = conn.execute(text("SELECT COUNT(*) FROM churn_scores")).scalar()
    engine.dispose()
    print(f"\n{query}\n")
    print(f"{'customer_id':>11}  {'proba_true':>10}  model_version")
    for customer_id, proba, version in rows:
        print(f"{customer_id:>11}  {proba:>10.4f}  {version}")
    print(f"\n({total} rows in churn_scores)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", default="sqlite:///predictions.db")
    parser.add_argument("--seed", type=int, help="train the model with this seed of its labels (default: keep the "
                                                 "model, or train one with seed 1 if there is none)")
    parser.add_argument("--show", action="store_true", help="read the view back instead of building")
    args = parser.parse_args()
    show(args.db) if args.show else build(args.db, args.seed)
