"""MLflow as the system of record: runs, params, metrics, status, events, checkpoints and models.

One owner per concern: ``client`` (tracking URI, MlflowClient, experiments, artifact locations),
``state`` (run creation, status, events, heartbeat, cancel: every write of run state),
``metrics`` (the async metrics logger), ``checkpoints`` (commit protocol, download cache),
``artifacts`` (config.yaml, generations, JSON records) and ``registry`` (weights resolution, model
registration). ``run`` is the read side every view uses (``Run``, ``get_run``, ``list_runs``);
``store`` re-exports the public names. No module imports mlflow at import time.
"""
