"""Plumbing every stage shares: typed field readers, the subprocess chokepoint, packaged data, quoting."""
