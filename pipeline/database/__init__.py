"""Everything that talks to a database about the pipeline itself.

Engines and URLs (`engines`), where transactions begin and how lock waits are retried (`transactions`), the
bookkeeping tables with their DDL and upgrades (`schema`) and every read and write of them (`state`), the run
journal of a database with a single writer (`journal`), and `dialects/`: the only place where SQL differs between
databases. Nothing here knows about models, scoring or the CLI.
"""
