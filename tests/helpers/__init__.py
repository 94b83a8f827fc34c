"""Helpers shared by the tests (not tests themselves): see the module docstrings."""
