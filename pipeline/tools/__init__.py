"""Looking before and after a run: `plan` (what a run would do), `diff` and `report` (two versions compared) and
`metrics` (Prometheus text for a table)."""
