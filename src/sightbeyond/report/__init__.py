"""Cross-run comparison: the paper's tables and figures rebuilt from MLflow, with intervals and significance."""
