"""Track stage: MLflow runs and their artifacts, a sweep's runs (record, resume), the comparison
report, the choice of the best variant and the registry's ``champion``. Only this stage and the
sweep's orchestration write to MLflow."""
