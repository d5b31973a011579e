"""Command-line tools: ``python -m panoptic_fpn_ext.tools.predict``, ``.export`` and ``.summary``."""
