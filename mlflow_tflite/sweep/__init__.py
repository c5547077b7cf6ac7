"""Orchestration: the per-source context, one variant's work as a function of values, the
``main`` job, the sweep over a grid and the executors (local processes, Ray actors) that move
values between the driver and its workers."""
