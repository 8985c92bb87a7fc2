"""Looking before and after a run: `validate` (the checks a run makes before it scores), `plan` (what a run would
do), `diff` and `report` (two versions compared) and `metrics` (Prometheus text for a table)."""
