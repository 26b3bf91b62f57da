"""timm model variants of timm_tricks; importing this package registers them with timm.

Registered names all end in ``_tricks`` and never shadow a timm name. Module file names differ from timm's own
model modules, because timm keys its registry by the last component of a module's name.
"""

from . import myrtle_resnet9, resnet_tricks, wider_resnet, xception_tricks
from .myrtle_resnet9 import GhostBatchNorm2d, MyrtleResNet9, ghost_batch_norm
from .resnet_tricks import INIT_SCHEMES, BottleneckStrideFirst, ResNetTricks, xavier_init_, zero_gamma_
from .wider_resnet import IdentityResidualBlock, WiderResNet, stage_plan
from .xception_tricks import XceptionTricks, xception_block_cfg

__all__ = [
    'INIT_SCHEMES',
    'BottleneckStrideFirst',
    'GhostBatchNorm2d',
    'IdentityResidualBlock',
    'MyrtleResNet9',
    'ResNetTricks',
    'WiderResNet',
    'XceptionTricks',
    'ghost_batch_norm',
    'myrtle_resnet9',
    'resnet_tricks',
    'stage_plan',
    'wider_resnet',
    'xavier_init_',
    'xception_block_cfg',
    'xception_tricks',
    'zero_gamma_',
]
