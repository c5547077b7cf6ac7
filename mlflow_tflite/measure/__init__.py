"""Measure stage: accuracy and fidelity against the source, latency (in a quiet phase),
per-tensor error against the float model, and what one parse of the flatbuffer tells
(op inventory, sparsity, float ops, Edge TPU readiness). No MLflow calls here."""
