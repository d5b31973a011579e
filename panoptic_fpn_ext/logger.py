"""The plugin's log records, where Detectron2's go.

Detectron2's ``setup_logger`` (called by ``default_setup`` and by ``DefaultTrainer`` itself)
configures the ``detectron2`` logger only: stdout, and ``log.txt`` in the output folder. The
plugin logs under ``panoptic_fpn_ext`` (e.g. the per-class PQ table, the summary of the weights
loaded), which nothing configures in those runs: its INFO records were dropped.
"""

import logging

__all__ = ["PLUGIN_LOGGER", "log_with_detectron2"]

PLUGIN_LOGGER = "panoptic_fpn_ext"


def log_with_detectron2() -> None:
    """Give the ``panoptic_fpn_ext`` logger the handlers and level of Detectron2's logger.

    Does nothing when the plugin's logger has handlers of its own (a user's
    ``setup_logger(name="panoptic_fpn_ext")`` or other logging setup wins), or when Detectron2's
    logger has none yet. Like Detectron2's logger, the plugin's then stops propagating to the root
    logger, so that a record is not printed twice where the root logger is configured too.
    Called where the plugin first logs in a run: the evaluator builders, the weights report, and
    ``train_net.py`` after ``default_setup``.
    """
    plugin = logging.getLogger(PLUGIN_LOGGER)
    detectron2 = logging.getLogger("detectron2")
    if plugin.handlers or not detectron2.handlers:
        return
    for handler in detectron2.handlers:
        plugin.addHandler(handler)
    plugin.setLevel(detectron2.getEffectiveLevel())
    plugin.propagate = False
