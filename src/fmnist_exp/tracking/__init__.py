"""MLflow: the store (store), a run's life (run), resuming and one writer per run (resume, claims),
sweeps as parent and child runs (sweep)."""
