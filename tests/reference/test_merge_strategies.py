"""The merge strategies (``peftkit.utils.merge_utils``) against short formulas on random non-zero tensors."""

from __future__ import annotations

import pytest
import torch

from peftkit.errors import ConfigError
from peftkit.utils import merge_utils as mu


def tensors(n: int = 3, shape: tuple[int, ...] = (5, 4)) -> list[torch.Tensor]:
    return [torch.randn(shape) for _ in range(n)]


def top_k_oracle(t: torch.Tensor, density: float) -> torch.Tensor:
    """Entries whose |t| is among the int(density * numel) largest (distinct magnitudes: random data)."""
    k = int(density * t.numel())
    threshold = t.abs().flatten().sort(descending=True).values[k - 1] if k else float("inf")
    return torch.where(t.abs() >= threshold, t, torch.zeros_like(t))


def ties_oracle(ts: list[torch.Tensor], w: torch.Tensor, sign_of: str) -> torch.Tensor:
    """Per entry: elected sign = sign(sum t) or sign(sum sign t) (0 -> +); mean of w_i t_i over agreeing i."""
    stacked = torch.stack(ts)
    votes = stacked.sum(0) if sign_of == "total" else stacked.sign().sum(0)
    elected = torch.where(votes >= 0, 1.0, -1.0)
    agree = (stacked.sign() == elected).float()
    weighted = stacked * w.view(-1, 1, 1)
    return (weighted * agree).sum(0) / agree.sum(0).clamp(min=1)


def test_task_arithmetic_is_the_weighted_sum() -> None:
    ts, w = tensors(), torch.tensor([0.5, -2.0, 1.5])
    torch.testing.assert_close(mu.task_arithmetic(ts, w), 0.5 * ts[0] - 2.0 * ts[1] + 1.5 * ts[2])


@pytest.mark.parametrize("density", [0.0, 0.25, 0.5, 0.9])
def test_magnitude_pruning_keeps_the_largest_entries(density: float) -> None:
    t = torch.randn(6, 7)
    pruned = mu.prune(t, density, "magnitude")
    torch.testing.assert_close(pruned, top_k_oracle(t, density))
    assert int((pruned != 0).sum()) == int(density * t.numel())


def test_magnitude_prune_sums_the_pruned_weighted_tensors() -> None:
    ts, w = tensors(), torch.tensor([1.0, 0.3, -0.7])
    expected = sum(wi * top_k_oracle(t, 0.4) for wi, t in zip(w, ts))
    torch.testing.assert_close(mu.magnitude_prune(ts, w, 0.4), expected)


def test_random_pruning_keeps_entries_unchanged_or_rescaled() -> None:
    t = torch.randn(200, 50)
    kept = mu.prune(t, 0.3, "random", rescale=True)
    survivors = kept != 0
    torch.testing.assert_close(kept[survivors], t[survivors] / 0.3)
    assert abs(survivors.float().mean().item() - 0.3) < 0.02  # 10,000 Bernoulli(0.3) draws
    plain = mu.prune(t, 0.3, "random", rescale=False)
    torch.testing.assert_close(plain[plain != 0], t[plain != 0])


@pytest.mark.parametrize("sign_of", ["total", "frequency"])
def test_ties_elects_a_sign_and_averages_the_agreeing_entries(sign_of: str) -> None:
    ts, w = tensors(4), torch.tensor([1.0, 0.5, -1.5, 2.0])
    expected = ties_oracle([top_k_oracle(t, 0.6) for t in ts], w, sign_of)
    torch.testing.assert_close(mu.ties(ts, w, 0.6, sign_of), expected)  # type: ignore[arg-type]


@pytest.mark.parametrize("name", ["dare_linear", "dare_ties"])
def test_dare_drops_with_bernoulli_masks_in_order(name: str) -> None:
    """The masks are torch.bernoulli draws on tensors like each t_i, one per tensor in order."""
    ts, w = tensors(), torch.tensor([0.7, -0.2, 1.1])
    torch.manual_seed(4)
    result = getattr(mu, name)(ts, w, 0.5)
    torch.manual_seed(4)
    dropped = [t * torch.bernoulli(torch.full_like(t, 0.5)) / 0.5 for t in ts]
    expected = mu.task_arithmetic(dropped, w) if name == "dare_linear" else ties_oracle(dropped, w, "total")
    torch.testing.assert_close(result, expected)


def test_density_one_keeps_everything_with_a_warning() -> None:
    t = torch.randn(3, 3)
    with pytest.warns(UserWarning, match="nothing is pruned"):
        assert torch.equal(mu.prune(t, 1.0, "magnitude"), t)


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: mu.prune(torch.ones(2), -0.1, "magnitude"), "density must be in"),
        (lambda: mu.prune(torch.ones(2), 0.5, "sideways"), "Unknown pruning method"),  # type: ignore[arg-type]
        (lambda: mu.calculate_majority_sign_mask(torch.ones(2, 2), "median"), "majority_sign_method"),  # type: ignore[arg-type]
    ],
)
def test_bad_arguments_raise_config_errors(call, match: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ConfigError, match=match):
        call()
