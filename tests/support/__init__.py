"""Helpers that more than one test module uses.

A test module never imports another test module (tests/unit/test_tree.py checks it):
whatever two of them share lives here, in tests/fixtures/ (host trees) or in a
conftest.py. Nothing here is collected by pytest, since no file is named ``test_*``.
"""
