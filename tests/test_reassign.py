"""The learned mapping: tokens move to the code with the largest summed score; tables stay consistent."""

import pytest
import torch

from vqbench import make_head
from vqbench.reassign import CodeReassigner

V, D, K = 40, 8, 5


def vq_head(**options):
    torch.manual_seed(0)
    return make_head("vq", V, D, K=K, mapping="random", **options).double()


def test_each_seen_token_moves_to_its_best_code_and_unseen_tokens_stay():
    head = vq_head()
    reassigner = CodeReassigner(head, every=3)
    before = head.mapping.clone()
    torch.manual_seed(1)
    hidden, targets = torch.randn(200, D, dtype=torch.float64), torch.randint(0, V // 2, (200,))
    reassigner.observe(hidden[:100], targets[:100])
    reassigner.observe(hidden[100:], targets[100:])
    scores = hidden @ head.codebook.detach().T
    sums = torch.zeros(V, K, dtype=torch.float64).index_add_(0, targets, scores)
    seen = torch.bincount(targets, minlength=V) > 0

    assert reassigner.maybe_reassign(2) is None  # not yet the period
    moved = reassigner.maybe_reassign(3)
    expected = before.clone()
    expected[seen] = sums[seen].argmax(1)
    assert torch.equal(head.mapping, expected)
    assert moved == int((expected != before).sum()) and moved > 0
    assert torch.equal(head.mapping[~seen], before[~seen])
    # with Z held fixed, every position's own score can only rise
    assert (scores.gather(1, head.mapping[targets][:, None]).sum()
            >= scores.gather(1, before[targets][:, None]).sum())
    assert reassigner.counts.sum() == 0 and reassigner.score_sums.abs().sum() == 0


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
