"""Everything that talks to a database about the pipeline itself.

Engines and URLs (`engines`), where transactions begin and how lock waits are retried (`transactions`), the
bookkeeping tables and every read and write of them (`state`), and `dialects/`: the only place where SQL differs
between databases. Nothing here knows about models, jobs' scoring or the CLI.
"""
