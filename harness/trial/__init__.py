"""The trial side: data, model, the offline cache, one training segment, its ranks and its faults."""
