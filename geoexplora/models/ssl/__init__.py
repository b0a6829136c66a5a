"""Self-supervised objectives continued on target imagery: DINOv2 (self-distillation) and MAE."""

from geoexplora.models.ssl.dino_clstoken_loss import DINOClsTokenLoss, sinkhorn_knopp
from geoexplora.models.ssl.dino_head import DINOHead
from geoexplora.models.ssl.dinov2 import DINOv2Network, DINOv2Objective, forward_tokens, teacher_temperature
from geoexplora.models.ssl.ibot_patch_loss import IBOTPatchLoss
from geoexplora.models.ssl.koleo_loss import KoLeoLoss
from geoexplora.models.ssl.mae import MAEObjective
from geoexplora.models.ssl.monitors import distillation_monitors, rankme
from geoexplora.models.ssl.options import DINOv2Options, MAEOptions
from geoexplora.models.ssl.masking import block_mask, ibot_masks, random_masking
from geoexplora.models.ssl.teacher import EMATeacher, cosine_momentum

__all__ = [
    "DINOClsTokenLoss",
    "DINOHead",
    "DINOv2Network",
    "DINOv2Objective",
    "DINOv2Options",
    "EMATeacher",
    "IBOTPatchLoss",
    "KoLeoLoss",
    "MAEObjective",
    "MAEOptions",
    "block_mask",
    "cosine_momentum",
    "distillation_monitors",
    "forward_tokens",
    "ibot_masks",
    "random_masking",
    "rankme",
    "sinkhorn_knopp",
    "teacher_temperature",
]
