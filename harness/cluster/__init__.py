"""Facts about the machines a run uses: capacity, ports, reachability, provenance, process cleanup."""
