"""Helpers for testing gpunn without a GPU (the CuPy stand-in); never imported by the library."""
