"""Runs nobody starts by hand: the long-running scheduler (`scheduler`), crontab lines (`crontab`) and backfills
over a range of dates (`backfill`)."""

#: What a backfill may do with the pointer once its dates are done (``--activate``).
ACTIVATE = ("latest", "none")
