"""The run contract: the names every stage shares, at the bottom of the house (imports nothing of harness)."""
