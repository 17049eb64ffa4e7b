"""Helpers the tests share (plain functions and data; fixtures live in conftest.py files)."""
