"""LoG-VMamba networks and mixers; ``logvmamba.create_model`` builds them by name."""
