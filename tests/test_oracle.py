"""The oracle bound: summed nats against a brute-force sum over tokens, and its identities."""

import math

import pytest
import torch

from vqbench.oracle import code_nats, oracle_table


def brute_force(log_probs, targets, codes, counts):
    softmax = uniform = unigram = 0.0
    V = log_probs.shape[1]
    for n, y in enumerate(targets.tolist()):
        members = [i for i in range(V) if codes[i] == codes[y]]
        p_code = sum(math.exp(float(log_probs[n, i])) for i in members)
        softmax -= float(log_probs[n, y])
        uniform += -math.log(p_code) + math.log(len(members))
        unigram += -math.log(p_code) - math.log(float(counts[y]) / sum(float(counts[i]) for i in members))
    return softmax, uniform, unigram


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_code_nats_match_a_brute_force_sum(seed):
    g = torch.Generator().manual_seed(seed)
    V, K, N = 11, 4, 9
    log_probs = torch.log_softmax(torch.randn(N, V, generator=g, dtype=torch.float64) * 2, dim=1)
    targets = torch.randint(0, V, (N,), generator=g)
    codes = torch.randint(0, K, (V,), generator=g)
    codes[:K] = torch.arange(K)  # every code used
    counts = torch.randint(1, 50, (V,), generator=g).double()
    assert code_nats(log_probs, targets, codes, counts, K) == pytest.approx(
        brute_force(log_probs, targets, codes, counts), rel=1e-10)


def test_singleton_codes_cost_nothing_and_one_code_costs_the_uniform_guess():
    g = torch.Generator().manual_seed(0)
    V, N = 8, 20
    log_probs = torch.log_softmax(torch.randn(N, V, generator=g, dtype=torch.float64), dim=1)
    targets = torch.randint(0, V, (N,), generator=g)
    counts = torch.ones(V, dtype=torch.float64)
    chunks = [(log_probs[:7], targets[:7]), (log_probs[7:], targets[7:])]
    two_alone = torch.cat([torch.arange(2), torch.full((V - 2,), 2)])  # tokens 0 and 1 alone, the rest share code 2
    rows = oracle_table(chunks, {("identity", V): torch.arange(V), ("one", 1): torch.zeros(V, dtype=torch.int64),
                                 ("two-alone", 3): two_alone}, counts)
    by = {r["mapping"]: r for r in rows}
    assert by["identity"]["oracle_ratio"] == pytest.approx(1.0)
    assert by["identity"]["within_code_ppl_factor"] == pytest.approx(1.0)
    # one code holding every token: the code has probability 1, so the oracle is the uniform guess V
    assert by["one"]["oracle_ppl"] == pytest.approx(V)
    assert by["one"]["oracle_unigram_ppl"] == pytest.approx(V)  # equal counts: unigram share = 1/n
    assert by["one"]["test_tokens"] == N
    assert (by["identity"]["exact_rows"], by["identity"]["exact_share"]) == (V, 1.0)
    assert (by["one"]["exact_rows"], by["one"]["exact_share"]) == (0, 0.0)
    assert by["two-alone"]["exact_rows"] == 2
    assert by["two-alone"]["exact_share"] == pytest.approx(float((targets < 2).double().mean()))
    softmax = math.exp(-float(log_probs.gather(1, targets[:, None]).sum()) / N)
    assert by["one"]["softmax_ppl"] == pytest.approx(softmax)
