"""Training: the one trainer entry point (``trainer.train``), local checkpoints, generation and the
headless ``ftmagic train`` / ``ftmagic demo`` commands."""
