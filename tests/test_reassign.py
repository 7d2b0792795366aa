"""The learned mapping: tokens move to the code with the largest summed score; tables stay consistent."""

import pytest
import torch

from vqbench import make_head
from vqbench.training.reassign import CodeReassigner

V, D, K = 40, 8, 5


def vq_head(**options):
    torch.manual_seed(0)
    return make_head("vq", V, D, K=K, mapping="random", **options).double()


@torch.no_grad()
def window_log_likelihood(head, hidden, targets):
    return float(head.target_log_prob(hidden, targets).sum())


def test_each_seen_token_moves_to_the_code_of_largest_first_order_gain():
    head = vq_head()
    reassigner = CodeReassigner(head, every=3)
    before = head.mapping.clone()
    torch.manual_seed(1)
    hidden, targets = 3 * torch.randn(200, D, dtype=torch.float64), torch.randint(0, V // 2, (200,))
    reassigner.observe(hidden[:100], targets[:100])
    reassigner.observe(hidden[100:], targets[100:])
    scores = hidden @ head.codebook.detach().T
    log_z = torch.logsumexp(scores + head.code_sizes.double().log(), dim=1)
    gain = torch.zeros(V, K, dtype=torch.float64).index_add_(0, targets, scores) \
        - torch.exp(scores - log_z[:, None]).sum(0)
    seen = torch.bincount(targets, minlength=V) > 0

    assert reassigner.maybe_reassign(2) is None  # not yet the period
    moved = reassigner.maybe_reassign(3)
    expected = before.clone()
    stay = gain.gather(1, before[:, None]).squeeze(1)
    expected[seen] = torch.where(gain.max(1).values > stay, gain.argmax(1), before)[seen]
    assert torch.equal(head.mapping, expected)
    assert moved == int((expected != before).sum()) and moved > 0
    assert torch.equal(head.mapping[~seen], before[~seen])
    assert reassigner.counts.sum() == 0 and reassigner.score_sums.abs().sum() == 0
    assert reassigner.code_mass.abs().sum() == 0


@pytest.mark.parametrize("bias", [False, True])
def test_a_single_move_never_lowers_the_window_likelihood(bias):
    """With one token seen, the move is one move, and the first-order gain is a lower bound."""
    for seed in range(5):
        head = vq_head(bias=bias)
        if bias:
            head.bias.data.normal_(0, 1, generator=torch.Generator().manual_seed(seed))
        torch.manual_seed(seed)
        token = int(torch.randint(0, V, ()))
        hidden = 3 * torch.randn(64, D, dtype=torch.float64)
        targets = torch.full((64,), token)
        before = window_log_likelihood(head, hidden, targets)
        reassigner = CodeReassigner(head, every=1)
        reassigner.observe(hidden, targets)
        reassigner.maybe_reassign(1)
        assert window_log_likelihood(head, hidden, targets) >= before - 1e-9


def test_derived_tables_match_a_head_built_with_the_new_map():
    head = vq_head()
    codes = torch.randint(0, K - 1, (V,))  # code K-1 left empty
    head.set_mapping(codes)
    fresh = make_head("vq", V, D, K=K, mapping=codes).double()
    fresh.codebook.data.copy_(head.codebook.data)
    assert torch.equal(head.code_sizes, fresh.code_sizes) and torch.equal(head.first_token, fresh.first_token)
    hidden, targets = torch.randn(7, D, dtype=torch.float64), torch.randint(0, V, (7,))
    torch.testing.assert_close(head.log_probs(hidden), fresh.log_probs(hidden))
    torch.testing.assert_close(head.loss(hidden, targets), fresh.loss(hidden, targets))
    assert torch.equal(head.predict(hidden), fresh.predict(hidden))


def test_bad_arguments_name_themselves():
    head = vq_head()
    with pytest.raises(ValueError, match="mapping"):
        head.set_mapping(torch.full((V,), K))
    with pytest.raises(ValueError, match="every"):
        CodeReassigner(head, every=0)
    with pytest.raises(TypeError, match="head"):
        CodeReassigner(make_head("softmax", V, D), every=5)
    with pytest.raises(ValueError, match="^margin:"):
        CodeReassigner(head, every=5, margin=-0.1)


def test_a_margin_holds_back_moves_that_gain_less_per_occurrence():
    """One token seen n times: it moves only when its best first-order gain exceeds margin x n nats."""
    torch.manual_seed(3)
    hidden = 3 * torch.randn(64, D, dtype=torch.float64)
    targets = torch.full((64,), 7)
    probe = vq_head()
    scores = hidden @ probe.codebook.detach().T
    log_z = torch.logsumexp(scores + probe.code_sizes.double().log(), dim=1)
    gain = scores.sum(0) - torch.exp(scores - log_z[:, None]).sum(0)  # [K] for token 7
    per_occurrence = float(gain.max() - gain[probe.mapping[7]]) / 64
    assert per_occurrence > 0
    for margin, moves in ((0.0, 1), (0.99 * per_occurrence, 1), (1.01 * per_occurrence, 0)):
        head = vq_head()
        reassigner = CodeReassigner(head, every=1, margin=margin)
        reassigner.observe(hidden, targets)
        assert reassigner.maybe_reassign(1) == moves, margin
        assert reassigner.last_seen == 1
