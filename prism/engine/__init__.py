"""The training engine: building a run from config, the step context, checkpoints, logging."""
