"""k-NN evaluation on frozen features, DINOv2 protocol: cosine similarity, k = 20, votes weighted by
``exp(similarity / 0.07)``. Also the forgetting check: k-NN accuracy before and after adaptation."""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import Tensor, nn


@torch.no_grad()
def extract_features(backbone: nn.Module, batches: Iterable[dict[str, Tensor]]) -> tuple[Tensor, Tensor]:
    """L2-normalised cls-token features (N, D) and labels (N,) of ``batches`` (``image``, ``label``)."""
    backbone.eval()
    features, labels = [], []
    for batch in batches:
        features.append(F.normalize(backbone.forward_features(batch["image"])[:, 0], dim=-1))
        labels.append(batch["label"])
    return torch.cat(features), torch.cat(labels)


def knn_predict(
    train_features: Tensor, train_labels: Tensor, features: Tensor, num_classes: int,
    k: int = 20, temperature: float = 0.07,
) -> Tensor:
    """Class scores (N, K) of ``features`` (N, D) from their ``k`` most cosine-similar training features.

    Features are L2-normalised here; each neighbour votes for its class with ``exp(sim / temperature)``.
    """
    train_features, features = F.normalize(train_features, dim=-1), F.normalize(features, dim=-1)
    similarity = features @ train_features.T
    top, index = similarity.topk(min(k, train_features.shape[0]), dim=1)
    votes = F.one_hot(train_labels[index], num_classes).float() * (top / temperature).exp().unsqueeze(-1)
    return votes.sum(dim=1)


def knn_accuracy(
    train_features: Tensor, train_labels: Tensor, features: Tensor, labels: Tensor, num_classes: int,
    k: int = 20, temperature: float = 0.07, ignore_index: int | None = None,
) -> float:
    """Top-1 accuracy of :func:`knn_predict` (samples / neighbours labelled ``ignore_index`` left out)."""
    if ignore_index is not None:
        keep = train_labels != ignore_index
        train_features, train_labels = train_features[keep], train_labels[keep]
        keep = labels != ignore_index
        features, labels = features[keep], labels[keep]
    scores = knn_predict(train_features, train_labels, features, num_classes, k, temperature)
    return (scores.argmax(dim=1) == labels).float().mean().item()
