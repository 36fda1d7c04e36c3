"""Behaviour catalogue, anchor pool, native directions, layer choice and probe training."""
