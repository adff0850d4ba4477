"""Stage 3, render: a plan into pinned, hashed environment files and their lock."""
