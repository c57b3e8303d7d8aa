"""Fault injection: backends raising, signals, a full disk and inputs vanishing, against real child processes."""
