"""Stage 5, smoke: load the model in the planned precision and generate, inside the built environment."""
