"""DINO, iBOT and KoLeo losses on small known inputs."""

import torch

from geoexplora.models.ssl import DINOClsTokenLoss, DINOHead, IBOTPatchLoss, KoLeoLoss, sinkhorn_knopp


def test_koleo_larger_for_clustered_than_spread_points():
    torch.manual_seed(0)
    spread = torch.eye(8)  # orthogonal unit vectors: every nearest neighbour at distance sqrt(2)
    clustered = torch.ones(8, 8) + 0.01 * torch.randn(8, 8)
    koleo = KoLeoLoss()
    assert koleo(clustered) > koleo(spread) + 1.0
    assert torch.isclose(koleo(spread), -torch.log(torch.tensor(2.0).sqrt()), atol=1e-5)


def test_dino_loss_minimal_when_student_matches_sharpened_teacher():
    torch.manual_seed(0)
    loss = DINOClsTokenLoss(num_prototypes=16, student_temp=0.1)
    teacher_logits = torch.randn(2, 4, 16)
    targets = [torch.softmax(t / 0.04, dim=-1) for t in teacher_logits]
    # student crop 0 must match teacher crop 1 and vice versa (no self-pair)
    matching = [teacher_logits[1] * 0.1 / 0.04, teacher_logits[0] * 0.1 / 0.04]
    best = loss(matching, targets)
    entropy = -sum((t * t.clamp_min(1e-12).log()).sum(-1).mean() for t in targets) / 2
    assert torch.isclose(best, entropy, atol=1e-4)
    for _ in range(5):
        other = [m + torch.randn_like(m) for m in matching]
        assert loss(other, targets) > best


def test_dino_loss_skips_self_pairs_and_averages_over_pairs():
    torch.manual_seed(0)
    loss = DINOClsTokenLoss(num_prototypes=4, student_temp=0.1)
    student = [torch.randn(3, 4) for _ in range(3)]  # 2 global crops, 1 local crop
    teacher = [torch.softmax(torch.randn(3, 4), dim=-1) for _ in range(2)]

    def ce(s, t):
        return -(t * torch.log_softmax(s / 0.1, dim=-1)).sum(-1).mean()

    pairs = [(0, 1), (1, 0), (2, 0), (2, 1)]  # never (0, 0) nor (1, 1)
    expected = sum(ce(student[i], teacher[j]) for i, j in pairs) / len(pairs)
    assert torch.isclose(loss(student, teacher), expected, atol=1e-5)


def test_centering_updates_center_only_in_training():
    loss = DINOClsTokenLoss(num_prototypes=4, center_momentum=0.9)
    logits = torch.tensor([[1.0, 2.0, 3.0, 4.0]])
    loss.teacher_probs(logits, 0.04)
    assert torch.allclose(loss.center, 0.1 * logits)
    loss.eval()
    loss.teacher_probs(logits, 0.04)
    assert torch.allclose(loss.center, 0.1 * logits)


def test_sinkhorn_balances_prototypes():
    torch.manual_seed(0)
    logits = torch.randn(64, 8) + torch.tensor([5.0, 0, 0, 0, 0, 0, 0, 0])
    q = sinkhorn_knopp(logits, temperature=0.5, iterations=20)
    assert torch.allclose(q.sum(dim=1), torch.ones(64), atol=1e-4)
    assert torch.allclose(q.sum(dim=0), torch.full((8,), 8.0), atol=1e-2)


def test_ibot_loss_counts_masked_patches_only():
    torch.manual_seed(0)
    loss = IBOTPatchLoss(num_prototypes=8)
    masks = torch.tensor([[True, False, True, False], [False, False, False, False], [False, True, False, False]])
    student = torch.randn(3, 4, 8)
    teacher = torch.softmax(torch.randn(3, 4, 8), dim=-1)
    value = loss(student[masks], teacher[masks], masks)
    ce = -(teacher * torch.log_softmax(student / 0.1, dim=-1)).sum(-1)  # (3, 4)
    expected = (ce[0, [0, 2]].mean() + 0.0 + ce[2, 1]) / 3
    assert torch.isclose(value, expected, atol=1e-5)
    changed = student.clone()
    changed[~masks] = 100 * torch.randn_like(changed[~masks])
    assert torch.isclose(loss(changed[masks], teacher[masks], masks), value)


def test_dino_head_shapes_and_unit_prototypes():
    head = DINOHead(in_dim=16, num_prototypes=32, hidden_dim=24, bottleneck_dim=8)
    out = head(torch.randn(5, 16))
    assert out.shape == (5, 32)
    assert out.abs().max() <= 1.0 + 1e-5  # cosine between unit bottleneck and unit-gain prototypes
