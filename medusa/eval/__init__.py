"""Evaluation: head accuracy against the base model's own greedy continuation, acceptance simulation, tree building."""
