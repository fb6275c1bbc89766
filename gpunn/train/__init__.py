"""Training: the step (eager and CUDA graph), fit and evaluate, early stopping and metrics."""
