"""Compute kernels per backend; each has a plain reference beside it."""
