"""MLflow as the system of record: runs, params, metrics, status, events, checkpoints and models.

``store`` writes and reads MLflow (the trainer and runners use it); ``run`` is the read side every
view uses (``Run``, ``get_run``, ``list_runs``). Neither module imports mlflow at import time.
"""
