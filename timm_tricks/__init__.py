"""timm_tricks: Bag-of-tricks model variants, training components and recipes for timm.

Importing the package registers the ``*_tricks`` models with timm, so ``timm.create_model('resnet50d_tricks')``
works after ``import timm_tricks``.
"""

from . import models  # noqa: F401  (registers the *_tricks variants with timm)

__version__ = "0.1.0"
