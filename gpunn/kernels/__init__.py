"""The maths: the ``*.cuh`` sources (one source for the CPU and the GPU), the include inliner, and the
activation and update-rule registries that every other floor reads."""
