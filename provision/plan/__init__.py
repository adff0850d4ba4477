"""Stage 2, plan: a pure function of (host, matrix, model, preferences) -> Plan."""
