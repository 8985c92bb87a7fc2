"""Runs nobody starts by hand: the long-running scheduler (`scheduler`), crontab lines (`crontab`) and backfills
over a range of dates (`backfill`)."""
