"""Hardening tests: hostile input, races, crashes, faults and privileges (issue 8)."""
