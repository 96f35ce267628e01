"""mmengine's entry point for the registry scope ``qfocal``.

When an mmengine registry meets a type name ``'qfocal.X'`` it imports ``qfocal.registry``; importing this module
registers qfocal's mmdetection losses (:mod:`qfocal.integrations.mmdet`), so ``'qfocal.QualityFocalLoss'``
finds the plugin even where a config forgot ``custom_imports``, instead of the Python object
``qfocal.QualityFocalLoss`` (qfocal's own module, with other semantics). Needs mmengine.
"""

from .integrations.mmdet import MODELS

__all__ = ["MODELS"]
