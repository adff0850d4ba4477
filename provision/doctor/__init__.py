"""Beside the pipeline: diagnose the current environment against the machine and the model."""
