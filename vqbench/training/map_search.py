"""A fixed VQ-Logits mapping searched for one trained softmax model: local search on the oracle objective.

The oracle (vqbench/oracle.py) scores a map by the summed nats a VQ head would pay if it reproduced
the softmax model's code probabilities exactly, choosing 1/n inside a code:

    J(codes) = sum over positions t of [-log m_t + log n_code(y_t)],   m_t = sum of p_i(t) over i in code(y_t)

Moving one token v from its code a to code b changes only the positions whose target sits in a or b,
so the change of J is exact and cheap to get for every (v, b) at once from one pass over the
positions (``move_deltas``). Moves that touch disjoint pairs of codes change disjoint positions, so
their changes add exactly: a sweep takes the best moves greedily, each code touched by at most
``per_code`` accepted moves (1: J falls by exactly the accepted gains; more moves per sweep are
approximate, so a sweep that raises J is undone and retried with half as many). The oracle runs
the search on half of the validation positions, stops it when the other half stops improving, and
scores the map on test like any other: the best fixed map this search finds for that model, an
empirical estimate of what fixed maps can do.
"""

from __future__ import annotations

import math
from typing import Callable, Iterable, List, Optional, Tuple

import torch

Chunks = Callable[[], Iterable[Tuple[torch.Tensor, torch.Tensor]]]


def code_members(codes: torch.Tensor, num_codes: int) -> torch.Tensor:
    """[K, S] int64: the tokens of each code, padded with V (S: the largest code's size)."""
    V = codes.numel()
    order = torch.argsort(codes, stable=True)
    sizes = torch.bincount(codes, minlength=num_codes)
    starts = torch.cumsum(sizes, 0) - sizes
    width = max(int(sizes.max()), 1)
    slot = torch.arange(V) - starts[codes[order]]  # position of each token inside its code
    members = torch.full((num_codes, width), V, dtype=torch.int64)
    members[codes[order], slot] = order
    return members


def move_deltas(chunks: Iterable[Tuple[torch.Tensor, torch.Tensor]], codes: torch.Tensor,
                num_codes: int) -> Tuple[float, int, torch.Tensor]:
    """(J, positions, delta [V, K] float64): J of ``codes`` [V] over the (log_probs [n, V], targets [n]) chunks,
    and the change of J if token v alone moved to code b (+inf for its own code).

    The [n, V] passes run in the chunks' dtype (float32 log-probabilities: half the memory traffic); every
    sum over positions that can cancel is kept in float64.
    """
    V, K = codes.numel(), num_codes
    sizes = torch.bincount(codes, minlength=K).double()
    members = code_members(codes, K)                         # [K, S], padded with V
    gain_in = None                                          # [K, V]: sum over t in T_b of log1p(p_v / m_t)
    loss_out = torch.zeros(V + 1, dtype=torch.float64)     # [V]: sum over t in T_a(v) \ T_v of -log1p(-p_v / m_t)
    own_mass = torch.zeros(V, K, dtype=torch.float64)      # sum over t in T_v of -log(M[t, b] + p_v(t))
    own_log_m = torch.zeros(V, dtype=torch.float64)        # sum over t in T_v of log m_t
    per_token = torch.zeros(V, dtype=torch.float64)        # |T_v|
    per_code = torch.zeros(K, dtype=torch.float64)         # |T_b|
    J, positions = 0.0, 0
    for log_probs, targets in chunks:
        n = targets.numel()
        p = log_probs.exp()                                                   # [n, V]
        if gain_in is None:
            gain_in = torch.zeros(K, V, dtype=p.dtype)
        mass = torch.zeros(n, K, dtype=p.dtype).index_add_(1, codes, p).double()  # [n, K]
        target_codes = codes[targets]
        m = mass.gather(1, target_codes[:, None]).squeeze(1)                  # [n]
        gain_in.index_add_(0, target_codes, torch.log1p(p / m.to(p.dtype)[:, None]))
        # the target's code-mates lose mass when they leave: [n, S] gathers, not [n, V]
        mates = members[target_codes]                                         # [n, S]
        mate_p = torch.cat([p, torch.zeros(n, 1, dtype=p.dtype)], 1).gather(1, mates).double()
        out = -torch.log1p(-(mate_p / m[:, None]).clamp(max=1.0 - 1e-12))
        out[mates == targets[:, None]] = 0.0
        loss_out.index_add_(0, mates.reshape(-1), out.reshape(-1))
        p_target = p.gather(1, targets[:, None]).double()                     # [n, 1]
        own_mass.index_add_(0, targets, -torch.log(mass + p_target))
        own_log_m.index_add_(0, targets, m.log())
        per_token += torch.bincount(targets, minlength=V).double()
        per_code += torch.bincount(target_codes, minlength=K).double()
        J += float((-m.log() + sizes[target_codes].log()).sum())
        positions += n
    if gain_in is None:
        raise ValueError("chunks: no positions to score")
    grow = torch.where(per_code > 0, per_code * torch.log((sizes + 1) / sizes.clamp(min=1)), 0.0)   # [K]
    delta = -gain_in.T.double() + grow[None, :] + own_mass + per_token[:, None] * torch.log(sizes + 1)[None, :]
    a = codes
    rest = per_code[a] - per_token  # positions in v's code whose target is not v
    shrink = torch.where(rest > 0, rest * torch.log((sizes[a] - 1).clamp(min=1) / sizes[a]), 0.0)
    delta += (own_log_m - per_token * sizes[a].log() + loss_out[:V] + shrink)[:, None]
    delta[torch.arange(V), a] = math.inf
    return J, positions, delta


def pick_moves(delta: torch.Tensor, codes: torch.Tensor, per_code: int = 1) -> List[Tuple[int, int, float]]:
    """(token, new code, change of J) of the improving moves, best first, each code (source or target) in at
    most ``per_code`` of them and each token in one."""
    best, target = delta.min(dim=1)
    best_list, target_list, code_list = best.tolist(), target.tolist(), codes.tolist()
    touched = [0] * delta.shape[1]
    moves = []
    for v in torch.argsort(best).tolist():
        change = best_list[v]
        if not change < 0:
            break
        a, b = code_list[v], target_list[v]
        if touched[a] < per_code and touched[b] < per_code:
            touched[a] += 1
            touched[b] += 1
            moves.append((v, b, change))
    return moves


def objective(chunks: Iterable[Tuple[torch.Tensor, torch.Tensor]], codes: torch.Tensor, num_codes: int) -> Tuple[float, int]:
    """(J, positions) of ``codes`` over the (log_probs [n, V], targets [n]) chunks."""
    log_sizes = torch.bincount(codes, minlength=num_codes).double().log()
    J, positions = 0.0, 0
    for log_probs, targets in chunks:
        mass = torch.zeros(targets.numel(), num_codes, dtype=log_probs.dtype).index_add_(1, codes, log_probs.exp())
        target_codes = codes[targets]
        J += float((-mass.gather(1, target_codes[:, None]).squeeze(1).double().log() + log_sizes[target_codes]).sum())
        positions += targets.numel()
    return J, positions


def search_mapping(chunks: Chunks, codes: torch.Tensor, num_codes: int, sweeps: int = 30, per_code: int = 16,
                   tol: float = 1e-4, check: Optional[Chunks] = None,
                   log: Callable[[str], None] = lambda line: None) -> Tuple[torch.Tensor, List[dict]]:
    """Local search from ``codes`` [V]: (the codes it returns [V], one history entry per sweep).

    chunks() yields the (log_probs [n, V], targets [n]) of the search positions afresh on each call. Stops
    after ``sweeps`` sweeps, when no move improves, or when a sweep gains less than ``tol`` nats per
    position. check(), when given, yields held-out positions: each sweep's map is scored there too, the
    search stops at the first sweep that does not lower that score, and the map with the lowest held-out
    score is returned (moves chosen on a few occurrences of a rare token fit noise; the held-out
    positions say when the search stops generalising).
    """
    codes = codes.clone()
    history: List[dict] = []
    J, positions, delta = move_deltas(chunks(), codes, num_codes)
    held = objective(check(), codes, num_codes) if check else None
    best = (held[0] if held else J, codes)

    def record(sweep, moved):
        entry = {"sweep": sweep, "nats_per_position": J / positions, "moved": moved, "per_code": per_code}
        line = f"sweep {sweep}: {J / positions:.5f} nats per position"
        if held:
            entry["held_out_nats_per_position"] = held[0] / held[1]
            line += f", held out {held[0] / held[1]:.5f}"
        history.append(entry)
        log(line + f", {moved} tokens moved")

    record(0, 0)
    for sweep in range(1, sweeps + 1):
        moves = pick_moves(delta, codes, per_code)
        if not moves:
            break
        trial = codes.clone()
        for v, b, _ in moves:
            trial[v] = b
        trial_J, _, trial_delta = move_deltas(chunks(), trial, num_codes)
        if trial_J >= J:  # the approximate moves interfered: undo, and take fewer next time
            if per_code == 1:
                break  # cannot happen with exact changes, but never loop on rounding
            per_code = max(1, per_code // 2)
            log(f"sweep {sweep}: {len(moves)} moves raised J; retrying with at most {per_code} per code")
            continue
        gain = (J - trial_J) / positions
        codes, J, delta = trial, trial_J, trial_delta
        held = objective(check(), codes, num_codes) if check else None
        record(sweep, len(moves))
        if held:
            if held[0] >= best[0]:
                break
            best = (held[0], codes)
        if gain < tol:
            break
    return (best[1] if check else codes), history
