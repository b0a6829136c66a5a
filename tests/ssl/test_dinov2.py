"""EMA teacher without a frozen copy, masked token forward and the DINOv2 objective on a tiny ViT."""

import pytest
import torch
from peft import LoraConfig, inject_adapter_in_model
from timm.models.vision_transformer import VisionTransformer

from geoexplora.errors import GeoExploraError
from geoexplora.models.ssl import DINOv2Objective, DINOv2Options, EMATeacher, cosine_momentum, forward_tokens


def tiny_vit(in_chans: int = 5, lora: bool = False) -> VisionTransformer:
    """A 4-block ViT with the ExPLoRA freezing pattern: last block, cls token and LoRA trainable."""
    vit = VisionTransformer(
        img_size=32, patch_size=8, in_chans=in_chans, embed_dim=64, depth=4, num_heads=4, num_classes=0, dynamic_img_size=True
    )
    if lora:
        inject_adapter_in_model(LoraConfig(r=4, target_modules=["blocks.0.attn.qkv", "blocks.2.attn.qkv"]), vit)
    for name, p in vit.named_parameters():
        p.requires_grad = name.startswith("blocks.3.") or name == "cls_token" or "lora_" in name
    return vit


def tiny_objective(**kwargs) -> DINOv2Objective:
    options = DINOv2Options(**{"num_prototypes": 64, "head_hidden_dim": 64, "head_bottleneck_dim": 32, **kwargs})
    return DINOv2Objective(tiny_vit(lora=True), options)


def test_teacher_holds_only_trainable_tensors():
    vit = tiny_vit(lora=True)
    trainable = {n for n, p in vit.named_parameters() if p.requires_grad}
    assert any("lora_A" in n for n in trainable)
    teacher = EMATeacher(vit)
    assert set(teacher.ema_tensors()) == trainable
    assert len(list(teacher.buffers())) == len(trainable) < len(list(vit.parameters()))
    assert list(teacher.parameters()) == []


def test_ema_update_is_momentum_average():
    torch.manual_seed(0)
    vit = tiny_vit(lora=True)
    teacher = EMATeacher(vit)
    before = {n: t.clone() for n, t in teacher.ema_tensors().items()}
    with torch.no_grad():
        for p in vit.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p))
    teacher.update(vit, 0.9)
    params = dict(vit.named_parameters())
    for name, t in teacher.ema_tensors().items():
        assert torch.allclose(t, 0.9 * before[name] + 0.1 * params[name], atol=1e-6), name


def test_teacher_shares_frozen_weights_and_lags_the_student():
    torch.manual_seed(0)
    vit = tiny_vit(lora=True)
    teacher = EMATeacher(vit)
    x = torch.randn(2, 5, 32, 32)
    vit.eval()
    assert torch.allclose(teacher(vit, x), vit(x), atol=1e-5)
    with torch.no_grad():
        vit.blocks[3].mlp.fc2.bias.add_(torch.randn(64))  # trainable: the student moves, the teacher does not
    assert not torch.allclose(teacher(vit, x), vit(x), atol=1e-3)
    reference = teacher(vit, x)
    with torch.no_grad():
        vit.blocks[1].mlp.fc2.bias.add_(torch.randn(64))  # frozen: shared, so the teacher sees the change
    assert not torch.allclose(teacher(vit, x), reference, atol=1e-3)


def test_teacher_forward_keeps_student_training_mode_and_no_grad():
    vit = tiny_vit()
    teacher = EMATeacher(vit)
    vit.train()
    out = teacher(vit, torch.randn(2, 5, 32, 32))
    assert vit.training and all(m.training for m in vit.modules())
    assert not out.requires_grad


def test_cosine_momentum_schedule():
    assert cosine_momentum(0, 100) == pytest.approx(0.992)
    assert cosine_momentum(50, 100) == pytest.approx(0.996)
    assert cosine_momentum(100, 100) == pytest.approx(1.0)


def test_forward_tokens_replaces_masked_patches_before_blocks():
    torch.manual_seed(0)
    vit = tiny_vit().eval()
    x = torch.randn(2, 5, 32, 32)
    cls, patches = forward_tokens(vit, x)
    assert cls.shape == (2, 64) and patches.shape == (2, 16, 64)
    assert torch.allclose(torch.cat([cls[:, None], patches], 1), vit.forward_features(x), atol=1e-5)
    mask = torch.zeros(2, 16, dtype=torch.bool)
    mask[0, 3] = True
    token = torch.randn(64)
    _, masked = forward_tokens(vit, x, mask, token)
    y = x.clone()
    y[0, :, 0:8, 24:32] = 5.0  # patch 3 of image 0: hidden by the mask token, so it must not matter
    _, masked_changed = forward_tokens(vit, y, mask, token)
    assert torch.allclose(masked, masked_changed, atol=1e-5)
    assert not torch.allclose(masked, patches, atol=1e-3)


def test_dinov2_objective_learns_and_only_trainable_params_get_gradients():
    torch.manual_seed(0)
    objective = tiny_objective(centering="sinkhorn_knopp", teacher_temp=(0.05, 0.05), mask_probability=1.0)
    globals_ = [torch.randn(4, 5, 32, 32) for _ in range(2)]
    locals_ = [torch.randn(4, 5, 16, 16) for _ in range(2)]
    trainable = [p for p in objective.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=3e-3)
    losses = []
    for step in range(6):
        torch.manual_seed(1)  # same masks every step
        out = objective(globals_, locals_, step, 100)
        assert set(out) == {"loss", "monitors", "dino_loss", "ibot_loss", "koleo_loss", "teacher_temp", "momentum"}
        optimizer.zero_grad()
        out["loss"].backward()
        if step == 0:
            for name, p in objective.named_parameters():
                assert (p.grad is not None) == p.requires_grad, name
            assert objective.student.backbone.blocks[0].attn.qkv.lora_B["default"].weight.grad is not None
        optimizer.step()
        losses.append(out["loss"].item())
    assert losses[-1] < losses[0] - 0.05, losses


def test_dinov2_objective_shared_head_and_teacher_update():
    torch.manual_seed(0)
    objective = tiny_objective(ibot_separate_head=False)
    assert objective.student.ibot_head is None
    out = objective([torch.randn(2, 5, 32, 32)] * 2, [], 10, 100)
    assert out["momentum"] == pytest.approx(cosine_momentum(10, 100, *DINOv2Options().momentum))
    out["loss"].backward()
    before = {n: t.clone() for n, t in objective.teacher.ema_tensors().items()}
    objective.update_teacher(0.5)
    changed = [n for n, t in objective.teacher.ema_tensors().items() if not torch.equal(t, before[n])]
    assert changed == []  # the student has not moved yet
    torch.optim.SGD([p for p in objective.parameters() if p.requires_grad], lr=1.0).step()
    objective.update_teacher(0.5)
    assert any(not torch.equal(t, before[n]) for n, t in objective.teacher.ema_tensors().items())


def test_non_finite_loss_names_the_step():
    objective = tiny_objective()
    bad = torch.full((2, 5, 32, 32), float("nan"))
    with pytest.raises(GeoExploraError, match="step 7"):
        objective([bad, bad], [], 7, 100)
