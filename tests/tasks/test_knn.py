"""k-NN on frozen features (DINOv2 protocol)."""

from __future__ import annotations

import torch

from geoexplora.models import BackboneConfig, create_backbone
from geoexplora.tasks.knn import extract_features, knn_accuracy, knn_predict


def test_knn_votes_are_temperature_weighted_cosine_neighbours() -> None:
    train = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0]])
    labels = torch.tensor([0, 0, 1])
    scores = knn_predict(train, labels, torch.tensor([[0.2, 1.0]]), num_classes=2, k=3, temperature=0.07)
    sims = torch.nn.functional.normalize(train, dim=-1) @ torch.nn.functional.normalize(torch.tensor([0.2, 1.0]), dim=0)
    expected = torch.stack([(sims[:2] / 0.07).exp().sum(), (sims[2] / 0.07).exp()])
    assert torch.allclose(scores[0], expected)
    assert scores.argmax().item() == 1


def test_knn_accuracy_on_separable_clusters_and_ignored_labels() -> None:
    torch.manual_seed(0)
    centres = torch.eye(3, 8) * 5
    labels = torch.arange(3).repeat(30)
    feats = centres[labels] + 0.1 * torch.randn(90, 8)
    labels_with_ignored = labels.clone()
    labels_with_ignored[:3] = 255
    acc = knn_accuracy(feats[:60], labels_with_ignored[:60], feats[60:], labels[60:], 3, ignore_index=255)
    assert acc == 1.0


def test_extract_features_are_normalised_cls_tokens() -> None:
    backbone = create_backbone(BackboneConfig(model="vit_base_patch16_224", embed_dim=64, depth=2, num_heads=4,
                                              patch_size=8, img_size=32, bands=["red", "green", "blue"]))
    batches = [{"image": torch.randn(2, 3, 32, 32), "label": torch.tensor([0, 1])}] * 2
    feats, labels = extract_features(backbone, batches)
    assert feats.shape == (4, 64) and labels.tolist() == [0, 1, 0, 1]
    assert torch.allclose(feats.norm(dim=1), torch.ones(4))
