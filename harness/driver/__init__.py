"""The driver: one run's lifecycle (pre-flight, run, resume), the comparison and the MLflow sync."""
