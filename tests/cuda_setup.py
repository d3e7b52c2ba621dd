"""Imported first by the CUDA backend's tests: without a GPU, Triton's interpreter runs the kernels on the CPU
(TRITON_INTERPRET must be set before the kernels are defined). torch and triton are test dependencies."""

from __future__ import annotations

import os

import pytest

torch = pytest.importorskip("torch")
if not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"
pytest.importorskip("triton")

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
