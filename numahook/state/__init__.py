"""numahook's state directory: claims, their lock and journal, and recovery.

Layering and what each package may import: docs/architecture.md.
"""
