"""Imported first by the benchmarks that train or fit, so that a rerun reproduces its rows.

torch's MKL kernels return different last digits from run to run (measured in LLPR's force
Gram matrix, 1e-10, which the shallow heads' Laplace init starts from), and the heads' NLL
training amplifies that to ±0.04 of a coverage. MKL's conditional numerical reproducibility
(same machine, same threads) removes it: with ``MKL_CBWR=AUTO`` two trainings of Cu's heads
were bitwise equal and every row agreed to 5e-9. MKL reads the variable at its first call,
not when torch is imported (``mkl_serv_cbwr_get`` in libtorch_cpu reports the mode: 2 with
the variable set after ``import torch`` and before any computation, 1 without it), so this
module must be imported before the first tensor operation; importing it first is simplest.
A value the user set is kept.
"""

from __future__ import annotations

import os

os.environ.setdefault("MKL_CBWR", "AUTO")
