"""The node: what this host can do (model, probe, report) and how it is published.

Layering and what each package may import: docs/architecture.md.
"""
