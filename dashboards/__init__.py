"""The views: scripts that read recorded results (parquet, MLflow) and draw the paper's tables, figures and verdicts."""
