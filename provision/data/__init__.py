"""The sourced data the planner reads: the compatibility matrix, the model catalog, the GPU table, refresh."""
