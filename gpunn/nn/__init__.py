"""Layers, the Sequential model and its fused chain, flat parameter buffers, losses and gradient checks."""
