"""The map search: every move's change of the oracle objective against recomputing it, and a search that
only ever lowers it."""

import math

import pytest
import torch

from vqbench.training.map_search import move_deltas, pick_moves, search_mapping
from vqbench.oracle import code_nats


def problem(seed, V=10, K=4, N=40):
    g = torch.Generator().manual_seed(seed)
    log_probs = torch.log_softmax(torch.randn(N, V, generator=g, dtype=torch.float64) * 2, dim=1)
    targets = torch.randint(0, V, (N,), generator=g)
    codes = torch.randint(0, K, (V,), generator=g)
    codes[:K - 1] = torch.arange(K - 1)  # code K-1 may be empty: moves into an empty code are scored too
    return log_probs, targets, codes, K


def objective(log_probs, targets, codes, K):
    return code_nats(log_probs, targets, codes, torch.ones(codes.numel()), K)[1]


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_every_move_changes_the_objective_by_its_delta(seed):
    log_probs, targets, codes, K = problem(seed)
    chunks = [(log_probs[:15], targets[:15]), (log_probs[15:], targets[15:])]
    J, positions, delta = move_deltas(chunks, codes, K)
    assert J == pytest.approx(objective(log_probs, targets, codes, K), rel=1e-12) and positions == 40
    for v in range(codes.numel()):
        for b in range(K):
            if b == codes[v]:
                assert delta[v, b] == math.inf
                continue
            moved = codes.clone()
            moved[v] = b
            assert float(delta[v, b]) == pytest.approx(objective(log_probs, targets, moved, K) - J, abs=1e-9), (v, b)


def test_moves_on_disjoint_codes_add_exactly_and_touch_each_code_once():
    log_probs, targets, codes, K = problem(5, V=16, K=8, N=80)
    J, _, delta = move_deltas([(log_probs, targets)], codes, K)
    moves = pick_moves(delta, codes, per_code=1)
    assert len(moves) >= 2
    touched = [int(codes[v]) for v, _, _ in moves] + [b for _, b, _ in moves]
    assert len(touched) == len(set(touched))
    assert [c for _, _, c in moves] == sorted(c for _, _, c in moves) and all(c < 0 for _, _, c in moves)
    moved = codes.clone()
    for v, b, _ in moves:
        moved[v] = b
    assert objective(log_probs, targets, moved, K) - J == pytest.approx(sum(c for _, _, c in moves), abs=1e-9)


@pytest.mark.parametrize("per_code", [1, 4])
def test_the_search_lowers_the_objective_to_a_local_optimum(per_code):
    log_probs, targets, codes, K = problem(7, V=20, K=5, N=120)
    found, history = search_mapping(lambda: [(log_probs, targets)], codes, K, sweeps=100, per_code=per_code, tol=0)
    values = [h["nats_per_position"] for h in history]
    assert values == sorted(values, reverse=True) and values[-1] < values[0]
    assert values[-1] * 120 == pytest.approx(objective(log_probs, targets, found, K), rel=1e-12)
    _, _, delta = move_deltas([(log_probs, targets)], found, K)
    assert float(delta.min()) >= -1e-9  # no single move improves any more
    assert torch.equal(codes, problem(7, V=20, K=5, N=120)[2])  # the start map is not changed in place


def test_held_out_positions_stop_the_search_and_pick_the_map():
    """Search on a few positions, check on others: the returned map is the sweep with the lowest held-out
    objective, and the search stops at the first sweep that does not lower it."""
    from vqbench.training.map_search import objective
    log_probs, targets, codes, K = problem(11, V=30, K=6, N=400)
    search, check = (log_probs[:40], targets[:40]), (log_probs[40:], targets[40:])
    found, history = search_mapping(lambda: [search], codes, K, sweeps=50, per_code=1, tol=0, check=lambda: [check])
    held = [h["held_out_nats_per_position"] for h in history]
    assert held[:-1] == sorted(held[:-1], reverse=True)  # every sweep but the last lowered the held-out score
    best = min(range(len(held)), key=held.__getitem__)
    J, n = objective([check], found, K)
    assert J / n == pytest.approx(held[best], rel=1e-12)
    full, _ = search_mapping(lambda: [search], codes, K, sweeps=50, per_code=1, tol=0)
    assert objective([search], full, K)[0] <= objective([search], found, K)[0]  # without a check it goes on


def test_objective_matches_the_oracle_sum():
    from vqbench.training.map_search import objective
    log_probs, targets, codes, K = problem(3)
    assert objective([(log_probs[:7], targets[:7]), (log_probs[7:], targets[7:])], codes, K) == \
        (pytest.approx(code_nats(log_probs, targets, codes, torch.ones(codes.numel()), K)[1], rel=1e-12), 40)
