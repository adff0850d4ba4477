"""Stage 1, detect: the host profile, the probes that fill it, and the pure parsers of what they report."""
