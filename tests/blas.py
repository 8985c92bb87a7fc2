"""The BLAS kernels the suite runs with, chosen before numpy loads OpenBLAS.

OpenBLAS picks its AVX-512 kernels (SkylakeX) on CPUs that have them, and those compute a row's ``X @ coef`` with
another rounding at the tail of a batch than in its body: measured on such a CPU, a LogisticRegression's
``predict_proba`` of 1,000 rows scored one at a time differed from the whole batch in the last bit for 28 rows (3
in batches of 10, none in batches of 100). The suite compares versions scored in different batches bit for bit (a
top-up against a full run, Dask partitions against local chunks), so it runs with the AVX2 kernels (Haswell),
whose result for a row is the same in any batch, where the CPU has AVX2 and FMA and nobody chose a core type. The
README (*The last bit and the batch*) tells users the same.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path


def pin_batch_invariant_kernels() -> None:
    if "OPENBLAS_CORETYPE" in os.environ:
        return
    if "numpy" in sys.modules:
        raise RuntimeError("numpy was loaded before tests/conftest.py could choose OpenBLAS's kernels")
    try:
        flags = next((line.split(":", 1)[1].split() for line in Path("/proc/cpuinfo").read_text().splitlines()
                      if line.startswith("flags")), [])
    except OSError:
        return
    if {"avx2", "fma"} <= set(flags):
        os.environ["OPENBLAS_CORETYPE"] = "Haswell"
