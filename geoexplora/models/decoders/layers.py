"""The convolution unit every segmentation decoder is built from.

GroupNorm, not BatchNorm: checkpoints keep only trained parameters, never running buffers, and the
fine-tuning batches (4-16 windows) are too small for batch statistics anyway.
"""

from __future__ import annotations

import math

from torch import nn


def group_norm(channels: int) -> nn.GroupNorm:
    """GroupNorm with up to 8 groups (the largest divisor of ``channels`` not above 8)."""
    return nn.GroupNorm(math.gcd(8, channels), channels)


def conv_norm_act(in_channels: int, out_channels: int, kernel_size: int) -> nn.Sequential:
    """Conv (odd ``kernel_size``, same padding, no bias) -> GroupNorm -> ReLU: (B, Cin, h, w) -> (B, Cout, h, w)."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=False),
        group_norm(out_channels),
        nn.ReLU(inplace=True),
    )
