"""XML with no policy: hardened parsing and whitespace-preserving edits.

Layering and what each package may import: docs/architecture.md.
"""
