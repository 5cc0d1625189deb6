"""Baseline networks. Every module here is imported by the registry on first use:
adding a baseline is one file with a ``@register_model`` constructor."""
