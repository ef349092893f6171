"""Interactive inference: the chat CLI (``python -m medusa.inference.cli``)."""
