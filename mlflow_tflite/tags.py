"""Names of the MLflow tags mlflow-tflite writes, in one place.

Docs, the MLflow UI views and outside checks read these names (``VARIANT_TAG`` and ``ROLE_TAG``
with its values are in the DESIGN.md contract), so they are fixed. This module imports nothing:
every stage (tracking, sweep, registry, sources, CLI) can use it without pulling in another.
"""

# --- variant runs (one run per variant; also the sweep's child runs) -------------------------
VARIANT_TAG = "mlflow_tflite.variant"  # variant name, e.g. "int8-s0.5-96px"; also a model version tag
ROLE_TAG = "mlflow_tflite.role"  # ROLE_VARIANT or ROLE_SWEEP
ROLE_VARIANT = "variant"
ROLE_SWEEP = "sweep"
ERROR_TAG = "mlflow_tflite.error"  # one-line error of a FAILED / KILLED run
MODEL_URI_TAG = "mlflow_tflite.model_uri"  # URI of the logged tflite model
NOT_EVALUATED_TAG = "mlflow_tflite.not_evaluated"  # why a model was logged without metrics (Flex ops)
# Lineage of a model converted from an MLflow model URI.
SOURCE_MODEL_URI_TAG = "mlflow_tflite.source_model_uri"
SOURCE_RUN_ID_TAG = "mlflow_tflite.source_run_id"
WORST_TENSOR_TAG = "mlflow_tflite.worst_tensor"  # tensor with the lowest SNR against the float model
TENSOR_ERRORS_NOTE_TAG = "mlflow_tflite.tensor_errors"  # why a quantized run has no per-tensor table
# int8_mixed: "true" / "false"; a "false" variant is never selected or promoted (DESIGN.md contract).
TOLERANCE_MET_TAG = "mlflow_tflite.tolerance_met"
SUPERSEDED_TAG = "mlflow_tflite.superseded_by"  # on a replaced FAILED / KILLED child: the new run id
# Set only when a quantized variant is larger than the float model of the same source and input
# size: why, read from both flatbuffers (measure.size.size_warning), e.g. per-channel parameters.
SIZE_WARNING_TAG = "mlflow_tflite.size_warning"

# --- experiments -----------------------------------------------------------------------------
# MLflow 3's UI opens an experiment by its kind: without one it shows the GenAI overview, not runs.
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
TRAINING_EXPERIMENT_KIND = "custom_model_development"

# --- sweep parent runs -----------------------------------------------------------------------
CONFIG_DIGEST_TAG = "mlflow_tflite.config_digest"  # digest of sweep_config.json (resume checks it)
SELECTION_TAG = "mlflow_tflite.selection"  # why no variant was chosen (set only then)
RESUMED_FROM_TAG = "mlflow_tflite.resumed_from"  # a resuming run (mlflow run -P resume=...): the old parent
CONTINUED_IN_TAG = "mlflow_tflite.continued_in"  # the old parent: the run that took its children over
BEST_VARIANT_TAG = "mlflow_tflite.best_variant"
BEST_RUN_ID_TAG = "mlflow_tflite.best_run_id"
REGISTERED_VERSION_TAG = "mlflow_tflite.registered_version"

# --- registered models -----------------------------------------------------------------------
OBJECTIVE_TAG = "mlflow_tflite.objective"  # what "best" means for the champion (options.Objective)

# --- registered model versions ---------------------------------------------------------------
EVAL_DIGEST_TAG = "mlflow_tflite.eval_digest"  # MLflow dataset digest of the evaluation data
# The tolerance verdict a version was registered with: the violation text, or TOLERANCE_MET.
TOLERANCE_TAG = "mlflow_tflite.tolerance_violation"
TOLERANCE_MET = "none"
# Written last, after the metrics, digest and verdict: only ready versions enter the champion rule.
READY_TAG = "mlflow_tflite.ready"
# Metrics copied onto each version as tags (the champion guard compares them), plus VARIANT_TAG.
VERSION_METRIC_TAGS = ("accuracy", "accuracy_drop", "agreement", "cosine_similarity", "relative_error",
                       "max_abs_error", "size_bytes", "gzip_size_bytes", "latency_ms_p50", "latency_ms_ci95_low",
                       "latency_ms_ci95_high")
