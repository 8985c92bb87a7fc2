"""A run: list the domain, score it, write a new version, audit it and hand it to the pointer.

`materialize` holds the order of a run and `context` what a run is given. It calls `domain` (what to score),
`model` with `registry` and `flavors/` (loading), `scoring` (calling the model and checking its output),
`executors` with `partitions` and `stages` (who scores which rows, overlapping reads, scoring and writes),
`store` (filling and keying a version table), `topup` and `changes` (incremental runs: from the domain's hashes, or
from the rows the source says changed) and `audits` (what blocks a publish).
"""
