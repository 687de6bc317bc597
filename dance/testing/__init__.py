"""Reusable test suites for dance components; plugins import them in their own tests."""
