"""Operations on one domain that the hook, numahookd and the CLI share.

Layering and what each package may import: docs/architecture.md.
"""
