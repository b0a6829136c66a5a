"""The DINOv2 objective's pieces against small cases worked out by hand."""

import math

import pytest
import torch
import torch.nn.functional as F

from geoexplora.errors import GeoExploraError
from geoexplora.models.ssl import DINOClsTokenLoss, DINOHead, DINOv2Options, distillation_monitors, rankme, sinkhorn_knopp


def test_centering_uses_the_previous_centre_then_moves_it():
    loss = DINOClsTokenLoss(num_prototypes=2, center_momentum=0.9)
    first = torch.tensor([[1.0, 3.0], [3.0, 1.0]])  # batch mean (2, 2)
    second = torch.tensor([[0.0, 4.0], [0.0, 4.0]])  # batch mean (0, 4)
    loss.teacher_probs(first, 1.0)
    assert torch.allclose(loss.center, torch.tensor([[0.2, 0.2]]))  # 0.9 * 0 + 0.1 * (2, 2)
    probs = loss.teacher_probs(second, 0.5)
    # softmax(((0, 4) - (0.2, 0.2)) / 0.5) = softmax(-0.4, 7.6)
    expected = torch.softmax(torch.tensor([-0.4, 7.6]), dim=0)
    assert torch.allclose(probs, expected.expand(2, 2), atol=1e-6)
    assert torch.allclose(loss.center, torch.tensor([[0.18, 0.58]]))  # 0.9 * 0.2 + 0.1 * (0, 4)


def test_sinkhorn_knopp_one_iteration_by_hand():
    # exp(logits) = [[1, 2], [1, 1]] (samples x prototypes). Total 5; prototype masses 0.4, 0.6 -> each
    # scaled to 1/2; then each sample to 1/2: sample 0 -> (3/7, 4/7), sample 1 -> (0.6, 0.4).
    logits = torch.tensor([[0.0, math.log(2.0)], [0.0, 0.0]])
    q = sinkhorn_knopp(logits, temperature=1.0, iterations=1)
    assert torch.allclose(q, torch.tensor([[3 / 7, 4 / 7], [0.6, 0.4]]), atol=1e-6)


def test_sinkhorn_knopp_ignores_a_common_shift_of_the_logits():
    logits = torch.randn(6, 4)
    assert torch.allclose(sinkhorn_knopp(logits, 0.1), sinkhorn_knopp(logits + 60.0, 0.1), atol=1e-4)


def test_weight_normed_head_is_gain_times_cosine():
    torch.manual_seed(0)
    head = DINOHead(in_dim=4, num_prototypes=3, hidden_dim=8, bottleneck_dim=2, num_layers=1)
    with torch.no_grad():
        head.mlp[0].weight.copy_(torch.tensor([[1.0, 0, 0, 0], [0, 1.0, 0, 0]]))
        head.mlp[0].bias.zero_()
        head.prototypes.copy_(torch.tensor([[3.0, 0.0], [0.0, -0.5], [1.0, 1.0]]))  # norms do not matter
        head.prototype_gain.copy_(torch.tensor([[1.0], [2.0], [0.5]]))
    x = torch.tensor([[3.0, 4.0, 9.0, 9.0]])  # bottleneck (0.6, 0.8)
    expected = torch.tensor([[1.0 * 0.6, 2.0 * -0.8, 0.5 * (0.6 + 0.8) / math.sqrt(2)]])
    assert torch.allclose(head(x), expected, atol=1e-6)


def test_head_input_standardisation_and_prototypes_from_data():
    torch.manual_seed(0)
    head = DINOHead(in_dim=16, num_prototypes=6, hidden_dim=32, bottleneck_dim=8)
    features = 5.0 + 0.1 * torch.randn(40, 16)  # one shared direction plus small differences
    before = head(features).std(dim=0).mean()
    head.fit_input(features)
    assert torch.allclose(head.input_shift, features.mean(0)) and torch.allclose(head.input_scale, features.std(0))
    head.init_prototypes(features, torch.Generator().manual_seed(0))
    logits = head(features)
    # each prototype is the bottleneck vector of one row: that row scores exactly its gain (1), others less
    own = logits.max(dim=0).values
    assert torch.allclose(own, torch.ones(6), atol=1e-5)
    assert logits.argmax(dim=0).unique().numel() == 6
    assert logits.std(dim=0).mean() > 5 * before


def test_init_prototypes_needs_k_rows():
    head = DINOHead(in_dim=4, num_prototypes=8, hidden_dim=8, bottleneck_dim=4)
    with pytest.raises(ValueError, match="at least K=8"):
        head.init_prototypes(torch.randn(5, 4))


def test_monitors_by_hand():
    k = 4
    uniform = torch.full((6, k), 1 / k)
    logits = torch.zeros(6, k)
    embeddings = torch.eye(6, 8)  # 6 orthonormal rows: RankMe 6
    m = distillation_monitors(logits, uniform, torch.tensor(math.log(k) + 0.25), embeddings)
    assert m["teacher_entropy"].item() == pytest.approx(math.log(k), abs=1e-6)
    assert m["teacher_entropy_share"].item() == pytest.approx(1.0, abs=1e-6)
    assert m["student_teacher_kl"].item() == pytest.approx(0.25, abs=1e-6)
    assert m["logit_spread"].item() == 0.0
    assert m["rankme"].item() == pytest.approx(6.0, rel=1e-4)
    one_hot = F.one_hot(torch.tensor([0, 1, 1, 1, 1, 1]), k).float()
    assert distillation_monitors(logits, one_hot, torch.tensor(0.0), embeddings)["prototypes_used"].item() == 0.5
    assert rankme(torch.ones(5, 3)).item() == pytest.approx(1.0, abs=1e-3)


def test_centering_auto_and_small_batch_warning():
    options = DINOv2Options(num_prototypes=64)
    assert options.resolve_centering(64) == "sinkhorn_knopp" and options.resolve_centering(32) == "centering"
    assert DINOv2Options(centering="centering").resolve_centering(10_000) == "centering"
    assert options.small_batch_warning(32) is None
    assert "8 crops for 64 prototypes" in DINOv2Options(num_prototypes=64).small_batch_warning(8)


@pytest.mark.parametrize("bad", [dict(num_prototypes=0), dict(teacher_temp=(0.04,)), dict(momentum=(0.9, 1.5)),
                                 dict(centering="mean"), dict(head_init="zeros"), dict(drop_path_rate=1.0)])
def test_options_reject_bad_values(bad):
    with pytest.raises(GeoExploraError):
        DINOv2Options(**bad)
