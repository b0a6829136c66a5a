"""Teacher centring and Sinkhorn-Knopp under DDP: 2 processes with B rows each equal 1 process with 2B rows."""

from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from geoexplora.models.ssl import DINOClsTokenLoss, sinkhorn_knopp

ROWS, K = 6, 5


def _logits() -> torch.Tensor:
    return torch.randn(2 * ROWS, K, generator=torch.Generator().manual_seed(0)) * 3


def _worker(rank: int, init_file: str, out: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        mine = _logits()[rank * ROWS:(rank + 1) * ROWS]
        loss = DINOClsTokenLoss(K, center_momentum=0.9)
        centred = loss.teacher_probs(mine, 0.5)
        balanced = sinkhorn_knopp(mine, 0.5)
        torch.save({"centred": centred, "center": loss.center, "balanced": balanced}, f"{out}.{rank}")
    finally:
        dist.destroy_process_group()


def test_two_processes_match_one_process_with_the_whole_batch(tmp_path: Path):
    out = str(tmp_path / "result")
    mp.spawn(_worker, args=(str(tmp_path / "init"), out), nprocs=2, join=True)
    ranks = [torch.load(f"{out}.{r}", weights_only=True) for r in range(2)]
    loss = DINOClsTokenLoss(K, center_momentum=0.9)
    whole = _logits()
    expected_probs = loss.teacher_probs(whole, 0.5)
    expected_balanced = sinkhorn_knopp(whole, 0.5)
    for rank, got in enumerate(ranks):
        rows = slice(rank * ROWS, (rank + 1) * ROWS)
        assert torch.allclose(got["center"], loss.center, atol=1e-6)  # every rank holds the global centre
        assert torch.allclose(got["centred"], expected_probs[rows], atol=1e-6)
        assert torch.allclose(got["balanced"], expected_balanced[rows], atol=1e-5)
