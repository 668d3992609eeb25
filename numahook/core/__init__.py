"""The pure core: the request, the fitting and the rendering of a domain. No I/O.

Layering and what each package may import: docs/architecture.md.
"""
