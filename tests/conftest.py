"""Shared fixtures: the synthetic datasets and fake release trees of data_fixtures.py."""

pytest_plugins = ["data_fixtures"]
