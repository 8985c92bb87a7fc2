"""jobs/example_data.py, the Quick start's first step: it builds the example's source table and model wherever
``--db`` points, and says where without the URL's password."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url

from pipeline.database.engines import make_engine

SCRIPT = Path(__file__).resolve().parents[1] / "jobs" / "example_data.py"
SECRET = "s3cret w@rd"


@pytest.mark.postgres
def test_the_example_data_script_names_its_database_without_the_password(postgresql_url, tmp_path):
    """It printed ``customers: 5000 rows in postgresql://app:<password>@db/app`` (the Quick start passes
    ``--db $PIPELINE_DATABASE_URL``); the server here trusts every login, so any password connects."""
    if make_url(postgresql_url).password is not None:
        pytest.skip("needs a test server URL without a password (trust authentication)")
    url = make_url(postgresql_url).set(password=SECRET).render_as_string(hide_password=False)
    (tmp_path / "jobs").mkdir()
    shutil.copy(SCRIPT, tmp_path / "jobs")
    done = subprocess.run([sys.executable, str(tmp_path / "jobs" / SCRIPT.name), "--db", url], capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("customers: 5000 rows in postgresql://postgres:***@"), done.stdout
    assert "s3cret" not in done.stdout + done.stderr
    model = tmp_path / "jobs" / "models" / "churn.joblib"
    assert model.exists() and "model (seed 1)" in done.stdout
    trained = model.read_bytes()
    again = subprocess.run([sys.executable, str(tmp_path / "jobs" / SCRIPT.name), "--db", postgresql_url],
                           capture_output=True, text=True, timeout=300)  # another database: the model is kept
    assert again.returncode == 0 and "model kept" in again.stdout and model.read_bytes() == trained, again.stdout
    engine = make_engine(postgresql_url)
    try:
        with engine.connect() as conn:
            assert conn.execute(text("SELECT COUNT(*) FROM customers")).scalar_one() == 5000
    finally:
        engine.dispose()
