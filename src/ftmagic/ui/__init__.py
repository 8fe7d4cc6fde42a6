"""The notebook layer: the ``%%finetune`` and ``%ft`` magics, the panel and the live view.

Nothing here trains or reads data itself: every module calls the public API in ``ftmagic.api`` and
reads runs from MLflow, so a run started anywhere can be watched from here. This package's
``__init__`` imports nothing, so ``import ftmagic.ui`` stays free of IPython and ipywidgets.
"""
