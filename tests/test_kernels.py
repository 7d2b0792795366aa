"""Faster kernels against the implementations they replaced, kept here as references: same loss,
log-probabilities and gradients in float64, float32 and bfloat16, over several shapes (odd ones too)."""

import copy
import math

import pytest
import torch
import torch.nn.functional as F

import vqbench

from conftest import largest_saved_for_backward

SHAPES = [(97, 16, 40), (2, 3, 1), (1001, 33, 77), (5, 1, 9)]  # V, d, N
DTYPES = [(torch.float64, 1e-12), (torch.float32, 2e-5), (torch.bfloat16, 3e-2)]


def huffman_reference(tree, hidden, target):
    """The gather-based path the Huffman kernel replaced: [E, d] rows of hidden and of the node vectors."""
    depth = tree.depth[target]
    on_path = tree.path_signs[target] != 0
    nodes = tree.path_nodes[target][on_path]
    signs = tree.path_signs[target][on_path].to(hidden.dtype)
    token = torch.arange(target.shape[0]).repeat_interleave(depth)
    scores = torch.einsum("ed,ed->e", hidden.index_select(0, token), tree.node_weight.index_select(0, nodes))
    return hidden.new_zeros(target.shape[0]).index_add(0, token, F.logsigmoid(signs * scores))


def values_and_grads(module, fn, hidden, target, weights):
    """fn(hidden, target) [N], its weighted sum's gradients for hidden and every parameter of module."""
    h = hidden.clone().requires_grad_(True)
    module.zero_grad(set_to_none=True)
    out = fn(h, target)
    (out * weights).sum().backward()
    return [out.detach(), h.grad] + [p.grad for p in module.parameters()]


def case(spec, dtype, vocab, d, n, seed=0, counts=None):
    torch.manual_seed(seed)
    head = vqbench.make_head(spec, vocab, d, dtype=dtype, token_counts=counts)
    g = torch.Generator().manual_seed(seed + 1)
    hidden = torch.randn(n, d, generator=g).to(dtype)
    target = torch.randint(0, vocab, (n,), generator=g)
    weights = torch.randn(n, generator=g).to(dtype)
    return head, hidden, target, weights


def assert_close_all(ours, reference, atol, dtype):
    rtol = atol if dtype == torch.bfloat16 else 0
    for a, b in zip(ours, reference):
        assert a is not None and b is not None and a.dtype == b.dtype and a.shape == b.shape
        torch.testing.assert_close(a.double(), b.double(), atol=atol, rtol=rtol)


@pytest.mark.parametrize("vocab,d,n", SHAPES)
@pytest.mark.parametrize("dtype,atol", DTYPES)
def test_huffman_kernel_equals_gather_reference(vocab, d, n, dtype, atol):
    head, hidden, target, weights = case("hierarchical:tree=huffman", dtype, vocab, d, n)
    tree = head.tree
    ours = values_and_grads(tree, tree.target_log_prob, hidden, target, weights)
    reference = values_and_grads(tree, lambda h, t: huffman_reference(tree, h, t), hidden, target, weights)
    assert_close_all(ours, reference, atol, dtype)


def test_huffman_kernel_with_skewed_counts_and_repeated_targets():
    counts = torch.tensor([1000.0, 1, 1, 3, 50, 7, 7, 2, 900, 1, 4])
    head, hidden, _, weights = case("hierarchical:tree=huffman", torch.float64, 11, 6, 30, counts=counts)
    target = torch.tensor([0, 8, 1, 1, 1, 9, 10, 0, 0, 0] * 3)
    tree = head.tree
    ours = values_and_grads(tree, tree.target_log_prob, hidden, target, weights)
    reference = values_and_grads(tree, lambda h, t: huffman_reference(tree, h, t), hidden, target, weights)
    assert_close_all(ours, reference, 1e-12, torch.float64)
    # the public loss goes through the kernel too
    assert torch.allclose(head.loss(hidden, target), -huffman_reference(tree, hidden, target).mean(), atol=1e-12)


def test_huffman_kernel_keeps_no_gathered_path_rows():
    """The kernel's point: no [E, d] tensor of gathered rows (E = the summed depths) is kept for backward."""
    head, hidden, target, _ = case("hierarchical:tree=huffman", torch.float32, 97, 16, 40)
    rows = int(head.tree.depth[target].sum()) * 16
    assert 0 < largest_saved_for_backward(lambda: head.loss(hidden.requires_grad_(True), target).backward()) < rows


def test_fresh_empty_advises_only_whole_huge_pages_inside_the_tensor(monkeypatch):
    from vqbench.heads import fresh
    calls = []
    monkeypatch.setattr(fresh, "_madvise", lambda start, length, advice: calls.append((start, length, advice)) or 0)
    t = fresh.fresh_empty((3, fresh.HUGE_PAGE), dtype=torch.uint8, device="cpu")
    (start, length, advice), = calls
    assert advice == fresh._MADV_HUGEPAGE and start % fresh.HUGE_PAGE == 0 and length % fresh.HUGE_PAGE == 0
    assert t.data_ptr() <= start and start + length <= t.data_ptr() + t.numel() and length >= fresh.HUGE_PAGE
    calls.clear()
    fresh.fresh_empty((100,), dtype=torch.uint8, device="cpu")  # no whole huge page inside: no advice
    assert not calls
    assert torch.equal(fresh.fresh_zeros((5, 7), dtype=torch.float64, device="cpu"), torch.zeros(5, 7, dtype=torch.float64))


@pytest.mark.parametrize("op", ["logits", "log_probs"])
def test_vq_fresh_outputs_are_advised_onto_huge_pages(monkeypatch, op):
    """A fresh V-wide result (no out=, no autograd) is advised before its first touch, with the values of
    the autograd path."""
    from vqbench.heads import fresh
    head, hidden, _, _ = case("vq:K=10", torch.float64, 1000, 8, 600)
    calls = []
    monkeypatch.setattr(fresh, "_madvise", lambda start, length, advice: calls.append((start, length)) or 0)
    with torch.no_grad():
        result = getattr(head, op)(hidden)
    storage = result.untyped_storage()
    assert calls and all(storage.data_ptr() <= s and s + n <= storage.data_ptr() + storage.nbytes() for s, n in calls)
    assert torch.equal(result, getattr(head, op)(hidden).detach())


@pytest.mark.parametrize("values_dtype,bias_dtype", [(torch.float32, torch.float32), (torch.bfloat16, torch.bfloat16),
                                                     (torch.bfloat16, torch.float32)])
@pytest.mark.parametrize("op", ["logits", "log_probs", "logits_into", "log_probs_into"])
def test_vq_biased_spread_kernel_equals_the_two_torch_passes(monkeypatch, values_dtype, bias_dtype, op):
    """vq:bias=1 without autograd: one C++ pass (gather and bias) gives exactly the gather-then-add_ result, the
    bias read in its own dtype (float32 under bf16 autocast) and the sum rounded once; with autograd the torch
    passes run."""
    from vqbench.heads import vq_kernels
    if not vq_kernels.available():
        pytest.skip("no C++ kernels here")
    head, _, _, _ = case("vq:K=13,bias=1", bias_dtype, 1001, 33, 77)
    with torch.no_grad():
        head.bias.normal_()
    # under bf16 autocast the head gets float32 hidden states and its products give bfloat16 code values
    hidden = torch.randn(77, 33, generator=torch.Generator().manual_seed(5)).to(bias_dtype)
    calls = []
    kernel = vq_kernels.spread_bias
    monkeypatch.setattr(vq_kernels, "spread_bias", lambda *args: calls.append(1) or kernel(*args))

    def run():
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=values_dtype != bias_dtype):
            if op.endswith("_into"):
                out = torch.empty(1001, 77, dtype=bias_dtype).T  # hidden's dtype, token-major as new_output makes
                getattr(head, op[:-5])(hidden, out=out)
                return out
            return getattr(head, op)(hidden)
    fused = run()
    # out= is in hidden's dtype: under autocast the bfloat16 code values are converted to it first
    assert calls and fused.dtype == (bias_dtype if op.endswith("_into") else values_dtype)
    monkeypatch.setattr(vq_kernels, "supports", lambda *tensors: False)
    assert torch.equal(fused, run())
    with_grad = head.logits(hidden.requires_grad_(True))
    assert len(calls) == 1 and with_grad.requires_grad


@pytest.mark.parametrize("spec", ["vq:K=13", "vq:K=13,bias=1"])
def test_vq_into_a_float32_out_under_bfloat16_autocast(spec):
    """Under autocast the code values are bfloat16 while out= is in hidden's float32: the spread converts them
    (torch's index_select alone refuses the mix)."""
    head, hidden, _, _ = case(spec, torch.float32, 101, 8, 9)
    out = head.new_output(9)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        head.logits(hidden, out=out)
        expected = head.logits(hidden).float()
    assert torch.equal(out, expected)


def class_tree_reference(tree, hidden, target):
    """The autograd path the class-tree kernel replaced: a split of the weight, one cross_entropy per class."""
    cls = tree.class_of[target]
    class_lp = torch.log_softmax(hidden @ tree.class_weight.T, dim=-1).gather(1, cls[:, None]).squeeze(1)
    perm = torch.argsort(cls, stable=True)
    per_class = torch.bincount(cls, minlength=tree.num_classes).tolist()
    hidden_groups = hidden[perm].split(per_class)
    position_groups = tree.position[target[perm]].split(per_class)
    words = tree.word_weight if tree.ids_in_frequency_order else tree.word_weight.index_select(0, tree.order)
    word_blocks = words.split(tree.class_size_list)
    nll = [F.cross_entropy(h @ w.T, p, reduction="none")
           for h, w, p, n in zip(hidden_groups, word_blocks, position_groups, per_class) if n]
    within = torch.empty_like(class_lp).index_put((perm,), -torch.cat(nll))
    return class_lp + within


@pytest.mark.parametrize("vocab,d,n", SHAPES)
@pytest.mark.parametrize("dtype,atol", DTYPES)
@pytest.mark.parametrize("shuffled", [False, True])
def test_class_tree_kernel_equals_split_reference(vocab, d, n, dtype, atol, shuffled):
    counts = None
    if shuffled:  # ids not in frequency order: the kernel reorders the rows
        counts = torch.randperm(vocab, generator=torch.Generator().manual_seed(3)).double() + 1
    head, hidden, target, weights = case("hierarchical", dtype, vocab, d, n, counts=counts)
    tree = head.tree
    assert tree.ids_in_frequency_order == (not shuffled or vocab == 1)
    ours = values_and_grads(tree, tree.target_log_prob, hidden, target, weights)
    reference = values_and_grads(tree, lambda h, t: class_tree_reference(tree, h, t), hidden, target, weights)
    assert_close_all(ours, reference, atol, dtype)


def test_class_tree_weight_gradient_is_one_fresh_tensor_on_huge_pages(monkeypatch):
    """The kernel writes every class's gradient block into one [V, d] tensor advised before its first
    touch (the split path concatenates fresh per-class products instead)."""
    from vqbench.heads import fresh
    head, hidden, target, _ = case("hierarchical", torch.float64, 5000, 128, 64)
    calls = []
    monkeypatch.setattr(fresh, "_madvise", lambda start, length, advice: calls.append((start, length)) or 0)
    head.loss(hidden, target).backward()
    grad = head.tree.word_weight.grad.untyped_storage()
    assert any(grad.data_ptr() <= s and s + n <= grad.data_ptr() + grad.nbytes() for s, n in calls)


@pytest.mark.parametrize("vocab,d,n", SHAPES + [(300, 8, 500)])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
def test_class_tree_predict_equals_argmax_of_log_probs(vocab, d, n, dtype):
    """The same tokens as the argmax over log_probs' values, ties (frequent in bfloat16) included."""
    head, hidden, _, _ = case("hierarchical", dtype, vocab, d, n)
    with torch.no_grad():
        reference = head.log_probs(hidden).argmax(dim=-1)
        assert torch.equal(head.predict(hidden), reference)
        # coarse weights make equal log-probabilities common: the first of them must win
        head.tree.word_weight.copy_((head.tree.word_weight * 4).round() / 4)
        hidden = (hidden * 2).round() / 2
        assert torch.equal(head.predict(hidden), head.log_probs(hidden).argmax(dim=-1))


def test_class_tree_predict_writes_no_normalised_log_probs(monkeypatch):
    head, hidden, _, _ = case("hierarchical", torch.float32, 97, 16, 40)
    monkeypatch.setattr(head.tree, "log_probs", lambda *a, **k: pytest.fail("predict built the V log-probs"))
    head.predict(hidden)


# --- the C++ kernels of the trees (baselines.class_kernels, baselines.huffman_kernels) -----------------------

def test_cpu_kernels_are_built_where_a_compiler_is():
    """Where g++ exists (the project's machines, CI) the trees run the C++ kernels, so the tests above check
    them rather than the torch fallback."""
    import shutil
    from baselines import class_kernels, huffman_kernels
    if shutil.which("g++") is None and shutil.which("c++") is None:
        pytest.skip("no C++ compiler here: the trees take their torch path")
    assert class_kernels.available() and huffman_kernels.available()




def shared_tops(tree, target):
    """For each block of four consecutive tokens in the kernels' order (their targets' leaf order), how many
    nodes from the root the four paths share."""
    order = torch.argsort(tree.leaf_rank[target])
    paths = [tree.leaf_node[tree.leaf_start[t]:tree.leaf_start[t + 1]].tolist() for t in target[order].tolist()]
    tops = []
    for first in range(0, len(paths) - 3, 4):
        a, b = paths[first], paths[first + 3]
        top = 0
        while top < min(len(a), len(b)) and a[-1 - top] == b[-1 - top]:
            top += 1
        tops.append(top)
    return tops


@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("sparse", [False, True])
@pytest.mark.parametrize("dtype,atol", DTYPES[1:])
def test_huffman_kernel_blocks_of_tokens_sharing_the_top_of_their_paths(threads, sparse, dtype, atol):
    """The kernels take the nodes that four consecutive tokens (in leaf order) share four tokens by four nodes,
    and sweep the tokens in per-thread ranges for the node gradient, summing the nodes cut between ranges
    afterwards: Zipf targets (repeated tokens, blocks sharing 4 to 8+ nodes and blocks sharing fewer), N not a
    multiple of four, d = 50 (a tail past both the 32- and the 16-wide loops), 1 to 3 threads. Same values and
    gradients as the gather reference."""
    from vqbench.measuring.measure import make_inputs
    vocab, d, n = 3000, 50, 403
    head = vqbench.make_head("hierarchical:tree=huffman" + (",sparse_grad=1" if sparse else ""), vocab, d,
                             dtype=dtype)
    hidden, target = make_inputs(vocab, d, n, "cpu", dtype, seed=3)
    weights = torch.randn(n, generator=torch.Generator().manual_seed(4)).to(dtype)
    tree = head.tree
    tops = shared_tops(tree, target)
    assert max(tops) >= 8 and min(tops) < 4 and n % 4
    saved = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        ours = values_and_grads(tree, tree.target_log_prob, hidden, target, weights)
    finally:
        torch.set_num_threads(saved)
    if sparse:
        ours[2] = ours[2].to_dense()
    # the reference in float64 from the same inputs: in bfloat16, index_add's bfloat16 sums would be the less exact
    # side; the root's gradient sums all 403 tokens' terms (magnitude ~25), so float32 is held to a relative 1e-5
    exact = copy.deepcopy(tree).double()
    reference = values_and_grads(exact, lambda h, t: huffman_reference(exact, h, t), hidden.double(), target,
                                 weights.double())
    for a, b in zip(ours, reference):
        assert a.dtype == dtype and a.shape == b.shape
        torch.testing.assert_close(a.double(), b, atol=atol, rtol=atol if dtype == torch.bfloat16 else 1e-5)


@pytest.mark.parametrize("dtype,atol", DTYPES)
@pytest.mark.parametrize("kernels", [True, False])
def test_huffman_sparse_gradient_holds_the_dense_gradients_touched_rows(monkeypatch, dtype, atol, kernels):
    """sparse_grad=1: the node vectors' gradient is a sparse tensor of exactly the rows the targets'
    paths reach, equal to the dense gradient there (which is zero elsewhere); the C++ kernels and the torch path
    (float64, or no compiler) alike."""
    from baselines import huffman_kernels
    if not kernels:
        monkeypatch.setattr(huffman_kernels, "supports", lambda *tensors: False)
    dense_head, hidden, target, weights = case("hierarchical:tree=huffman", dtype, 1001, 33, 77)
    sparse_head = vqbench.make_head("hierarchical:tree=huffman,sparse_grad=1", 1001, 33, dtype=dtype)
    sparse_head.load_state_dict(dense_head.state_dict())
    dense = values_and_grads(dense_head.tree, dense_head.tree.target_log_prob, hidden, target, weights)
    sparse = values_and_grads(sparse_head.tree, sparse_head.tree.target_log_prob, hidden, target, weights)
    grad = sparse[2]
    assert grad.is_sparse and grad.dtype == dtype and grad.shape == dense[2].shape
    on_path = dense_head.tree.path_signs[target] != 0
    touched = torch.unique(dense_head.tree.path_nodes[target][on_path])
    assert grad._nnz() == touched.numel() and torch.equal(grad.coalesce().indices()[0], touched)
    assert_close_all(sparse[:2] + [grad.to_dense()], dense, atol, dtype)
    assert sparse_head.spec == "hierarchical:tree=huffman,sparse_grad=1"


def test_sparse_grad_is_refused_for_the_class_tree_and_by_the_trainer():
    with pytest.raises(ValueError, match=r"^sparse_grad: only used with tree=huffman"):
        vqbench.make_head("hierarchical:sparse_grad=1", 50, 4)
    from vqbench.train import TrainConfig, validate_model
    with pytest.raises(ValueError, match=r"^head: .* gives sparse gradients"):
        validate_model(TrainConfig(head="hierarchical:tree=huffman,sparse_grad=1"))
    validate_model(TrainConfig(head="hierarchical:tree=huffman,sparse_grad=0"))


@pytest.mark.parametrize("spec", ["hierarchical", "hierarchical:tree=huffman"])
@pytest.mark.parametrize("dtype,atol", DTYPES[1:])
def test_tree_torch_fallback_equals_the_kernels(monkeypatch, spec, dtype, atol):
    """Where no compiler is, the trees' torch path gives the kernels' results."""
    from baselines import class_kernels, huffman_kernels
    kernels = huffman_kernels if "huffman" in spec else class_kernels
    if not kernels.available():
        pytest.skip("no C++ kernels here")
    head, hidden, target, weights = case(spec, dtype, 1001, 33, 77)
    tree = head.tree
    ours = values_and_grads(tree, tree.target_log_prob, hidden, target, weights)
    monkeypatch.setattr(kernels, "supports", lambda *tensors: False)
    fallback = values_and_grads(tree, tree.target_log_prob, hidden, target, weights)
    assert_close_all(ours, fallback, atol, dtype)


@pytest.mark.parametrize("spec", ["hierarchical", "hierarchical:tree=huffman"])
def test_tree_kernels_under_autocast_take_bfloat16_hidden_and_float32_weights(spec):
    """Under bf16 autocast a head may get bfloat16 hidden states with its float32 weights: the trees read both
    as they lie, return gradients in each input's dtype, and stay close to a float64 reference."""
    head, hidden, target, weights = case(spec, torch.float32, 1001, 33, 77)
    hidden, weights = hidden.to(torch.bfloat16), weights.to(torch.bfloat16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ours = values_and_grads(head.tree, head.tree.target_log_prob, hidden, target, weights)
    reference_head = vqbench.make_head(spec, 1001, 33, dtype=torch.float64)
    reference_head.load_state_dict({k: v.double() for k, v in head.state_dict().items()})
    tree = reference_head.tree
    reference = values_and_grads(tree, tree.target_log_prob, hidden.double(), target, weights.double())
    assert ours[1].dtype == torch.bfloat16 and all(g.dtype == torch.float32 for g in ours[2:])
    for a, b in zip(ours, reference):
        torch.testing.assert_close(a.double(), b, atol=5e-2, rtol=5e-2)


# --- the Huffman tree's log_probs and predict by one walk (huffman_kernels.tree_walk) --------------------------

# V=2: the root alone; N=1100 and 2100: each thread's columns cross the walk's 512-column tiles
WALK_SHAPES = SHAPES + [(2, 4, 17), (300, 8, 500), (97, 16, 1100), (1001, 33, 2100)]


@pytest.mark.parametrize("vocab,d,n", WALK_SHAPES)
@pytest.mark.parametrize("dtype,atol", DTYPES[1:])
def test_huffman_walk_equals_the_level_by_level_log_probs(vocab, d, n, dtype, atol):
    """The walk gives the differentiable level-by-level path's log-probabilities, fresh and into a token-major
    out, and predict gives their argmax."""
    head, hidden, _, _ = case("hierarchical:tree=huffman", dtype, vocab, d, n)
    reference_head = vqbench.make_head("hierarchical:tree=huffman", vocab, d, dtype=torch.float64)
    reference_head.load_state_dict({k: v.double() for k, v in head.state_dict().items()})
    with torch.no_grad():
        reference = reference_head.tree._log_probs_by_level(hidden.double())
        ours = head.log_probs(hidden)
        assert ours.dtype == dtype and ours.shape == (n, vocab) and ours.T.is_contiguous()
        torch.testing.assert_close(ours.double(), reference.double(), atol=atol, rtol=atol)
        into = head.new_output(n)
        assert head.log_probs(hidden, out=into) is into and torch.equal(into, ours)
        assert torch.equal(head.predict(hidden), ours.argmax(dim=-1))


def test_huffman_walk_is_normalised_and_exact_at_extreme_scores():
    """Scores from -1e4 to 1e4 (probabilities down to exp(-1e4)): every row still sums to one, and each
    log-probability matches float64 arithmetic; the walk's log(1 + exp(-|s|)) holds float32's accuracy."""
    head32, hidden, _, _ = case("hierarchical:tree=huffman", torch.float32, 1001, 33, 77)
    head64 = vqbench.make_head("hierarchical:tree=huffman", 1001, 33, dtype=torch.float64)
    for scale in (1e-3, 1.0, 30.0, 3e3):
        with torch.no_grad():
            head32.tree.node_weight.normal_(0, scale / 33 ** 0.5)
            head64.load_state_dict({k: v.double() for k, v in head32.state_dict().items()})
            ours = head32.log_probs(hidden).double()
            reference = head64.log_probs(hidden.double())
        torch.testing.assert_close(ours, reference, atol=2e-5 * max(1.0, scale), rtol=2e-6)
        assert torch.logsumexp(ours, 1).abs().max() < 1e-4


def test_huffman_walk_log1p_exp_matches_float64_over_the_float_range():
    """log sigmoid(x) for x over 1e-8 .. 1e38 and both signs, via log_probs of the smallest tree (V=2: one
    node, whose two leaves get log sigmoid(+-x)): within a few float32 ulps of the float64 value."""
    head = vqbench.make_head("hierarchical:tree=huffman", 2, 1, dtype=torch.float32)
    x = torch.cat([torch.logspace(-8, 38, 2000), -torch.logspace(-8, 38, 2000), torch.zeros(1)])
    with torch.no_grad():
        head.tree.node_weight.fill_(1.0)
        ours = head.log_probs(x[:, None]).double()
    expected = torch.stack([F.logsigmoid(x.double()), F.logsigmoid(-x.double())], 1)
    left = 0 if head.tree.left_child[0] == 0 else 1  # which leaf the root's left branch reaches
    expected = expected if left == 0 else expected.flip(1)
    torch.testing.assert_close(ours, expected, atol=1e-7, rtol=3e-7)


@pytest.mark.parametrize("threads", [1, 3])
def test_huffman_walk_with_other_thread_counts(threads):
    """Each thread walks its own columns: 1 and 3 threads (ranges of unequal width) give the same values."""
    head, hidden, _, _ = case("hierarchical:tree=huffman", torch.float32, 1001, 33, 1100)
    with torch.no_grad():
        reference = head.log_probs(hidden).clone()
        before = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            assert torch.equal(head.log_probs(hidden), reference)
            assert torch.equal(head.predict(hidden), reference.argmax(dim=-1))
        finally:
            torch.set_num_threads(before)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_huffman_walk_argmax_takes_the_first_of_ties_and_of_nans(dtype):
    """Equal counts make a balanced tree: with zero scores all 64 leaves tie and leaf 0 must win, though the walk
    reaches it last or first depending on the tree; a NaN score makes every leaf under its node NaN, and the first
    of them wins, as torch.argmax has it."""
    from baselines import huffman_kernels
    tree = vqbench.make_head("hierarchical:tree=huffman", 64, 4, token_counts=torch.ones(64)).tree
    plan = (tree.left_child, tree.right_child, tree.walk_order, tree.walk_slot, tree.walk_rows)
    scores = torch.zeros(63, 5, dtype=dtype)
    assert torch.equal(huffman_kernels.tree_argmax(scores, *plan, dtype), torch.zeros(5, dtype=torch.int64))
    scores[tree.walk_order[5], 1] = float("nan")
    scores[:, 2] = torch.randn(63).to(dtype)
    out = torch.empty(64, 5, dtype=dtype)
    huffman_kernels.tree_walk(scores, *plan, out)
    best = huffman_kernels.tree_argmax(scores, *plan, dtype)
    assert torch.isnan(out[:, 1]).any() and torch.equal(best, out.argmax(dim=0))


def test_huffman_predict_takes_the_walk_with_autograd_on(monkeypatch):
    """predict needs no gradient: with autograd on (the default) it still walks, without the V log-probs."""
    head, hidden, _, _ = case("hierarchical:tree=huffman", torch.float32, 97, 16, 40)
    with torch.no_grad():
        expected = head.log_probs(hidden).argmax(dim=-1)
    from baselines import huffman_kernels
    monkeypatch.setattr(huffman_kernels, "tree_walk", lambda *a, **k: pytest.fail("predict wrote log-probs"))
    monkeypatch.setattr(head.tree, "_log_probs_by_level", lambda *a, **k: pytest.fail("predict built log-probs"))
    assert torch.is_grad_enabled() and head.tree.node_weight.requires_grad
    assert torch.equal(head.predict(hidden), expected)


@pytest.mark.parametrize("counts", ["zipf", "equal"])
def test_huffman_walk_plan_is_a_preorder_with_rows_bounded_by_the_depth(counts):
    """Every parent before its children, each node's row free of any other pending node's, and the table no
    more rows than the tree is deep (equal counts: a balanced tree, the widest case for other orders)."""
    vocab = 1000
    weights = torch.ones(vocab) if counts == "equal" else 1000 / torch.arange(1, vocab + 1.0)
    tree = vqbench.make_head("hierarchical:tree=huffman", vocab, 4, token_counts=weights).tree
    order, slot = tree.walk_order.tolist(), tree.walk_slot.tolist()
    assert sorted(order) == list(range(vocab - 1)) and order[0] == vocab - 2
    place = {node: i for i, node in enumerate(order)}
    pending = {vocab - 2}
    for node in order:
        pending.discard(node)
        for child in (int(tree.left_child[node]), int(tree.right_child[node])):
            if child >= vocab:
                assert place[child - vocab] > place[node]
                pending.add(child - vocab)
        rows_in_use = [slot[p] for p in pending]
        assert len(set(rows_in_use)) == len(rows_in_use)
    assert tree.walk_rows <= int(tree.depth.max()) + 1


def test_huffman_log_probs_with_autograd_take_the_level_path_and_differentiate():
    head, hidden, _, _ = case("hierarchical:tree=huffman", torch.float32, 97, 16, 40)
    hidden.requires_grad_(True)
    out = head.log_probs(hidden)
    assert out.requires_grad
    out[:, 3].sum().backward()
    with torch.no_grad():
        torch.testing.assert_close(out, head.log_probs(hidden), atol=2e-5, rtol=0)
    assert hidden.grad is not None and head.tree.node_weight.grad is not None


def test_huffman_walk_under_autocast_writes_the_hidden_dtype():
    head, hidden, _, _ = case("hierarchical:tree=huffman", torch.float32, 1001, 33, 77)
    with torch.no_grad():
        reference = head.log_probs(hidden)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            ours = head.log_probs(hidden)
    assert ours.dtype == torch.float32
    torch.testing.assert_close(ours, reference, atol=0.15, rtol=0.02)


@pytest.mark.parametrize("vocab", [2, 11, 300])
def test_huffman_leaf_rank_is_the_left_to_right_leaf_order(vocab):
    """The kernels visit tokens by leaf_rank: it must be the leaves' order in a depth-first walk, left first."""
    counts = torch.arange(1, vocab + 1, dtype=torch.float64).pow(-1.1) * 1000 + 1
    tree = vqbench.make_head("hierarchical:tree=huffman", vocab, 4, token_counts=counts).tree
    leaves, stack = [], [2 * vocab - 2]
    while stack:
        node = stack.pop()
        if node < vocab:
            leaves.append(node)
        else:
            stack += [int(tree.right_child[node - vocab]), int(tree.left_child[node - vocab])]
    assert torch.equal(tree.leaf_rank[torch.tensor(leaves)], torch.arange(vocab))


def test_huffman_leaf_rank_sorts_paths_longer_than_one_key():
    """Codes of 70 steps, half of them equal over the first 62 (one key's worth), are sorted in 62-bit groups
    as lists of bits are."""
    from baselines.huffman_tree import leaf_order_rank
    g = torch.Generator().manual_seed(0)
    codes = torch.randint(0, 2, (80, 70), generator=g)              # root first, 1 = right
    codes[:40, :62] = codes[0, :62]                                 # half share the first group, differ after
    codes = torch.unique(codes, dim=0)
    codes = codes[torch.randperm(codes.shape[0], generator=g)]
    vocab = codes.shape[0]
    signs = torch.where(codes.flip(1) == 1, -1, 1).to(torch.int8)   # leaf upwards, -1 = right
    rank = leaf_order_rank(signs, torch.full((vocab,), 70))
    expected = sorted(range(vocab), key=lambda v: codes[v].tolist())
    assert torch.equal(rank[torch.tensor(expected)], torch.arange(vocab))


def scatter_loss_and_grads(head, hidden, target):
    """path=scatter's loss and its gradients for hidden, the codebook and (where there is one) the bias."""
    h = hidden.clone().requires_grad_(True)
    head.zero_grad(set_to_none=True)
    loss = head.loss(h, target)
    loss.backward()
    return [loss.detach(), h.grad] + [p.grad for p in head.parameters()]


def scatter_case(dtype, vocab, d, n, k, bias, empty_codes=False, seed=0):
    """A vq:path=scatter head in dtype (bias normal, so that codes' largest biases differ) and its float64 twin,
    which takes the torch path (the kernels take float32 and bfloat16 only)."""
    mapping = (torch.arange(vocab) * 7 % max(1, k // 2)) if empty_codes else None  # codes k // 2 .. k - 1 empty
    head, hidden, target, _ = case(f"vq:K={k},path=scatter,bias={bias}", dtype, vocab, d, n, seed)
    if mapping is not None:
        head.set_mapping(mapping)
    if bias:
        with torch.no_grad():
            head.bias.normal_(generator=torch.Generator().manual_seed(seed + 7))
    twin = copy.deepcopy(head).double()
    return head, twin, hidden, target


@pytest.mark.parametrize("vocab,d,n", SHAPES + [(3000, 24, 300)])
@pytest.mark.parametrize("dtype,atol", DTYPES[1:])
@pytest.mark.parametrize("bias", [0, 1])
def test_vq_scatter_kernel_equals_the_float64_torch_path(monkeypatch, vocab, d, n, dtype, atol, bias):
    """path=scatter's loss from the two C++ passes: loss and every gradient as the float64 torch path
    (spread, then TokenMajorCrossEntropy) gives them, with and without a bias, codes left empty or not."""
    from vqbench.heads import vq_kernels
    if not vq_kernels.available():
        pytest.skip("no C++ kernels here")
    calls = []
    forward = vq_kernels.spread_cross_entropy
    monkeypatch.setattr(vq_kernels, "spread_cross_entropy", lambda *a: calls.append(1) or forward(*a))
    for k, empty in ((min(13, vocab), False), (min(10, vocab), True)):
        head, twin, hidden, target = scatter_case(dtype, vocab, d, n, k, bias, empty)
        ours = scatter_loss_and_grads(head, hidden, target)
        reference = scatter_loss_and_grads(twin, hidden.double(), target)
        assert calls, "the kernel did not run"
        assert_close_all([t.double() for t in ours], reference, atol, dtype)
        assert [t.dtype for t in ours] == [dtype] * len(ours)
        calls.clear()


@pytest.mark.parametrize("threads", [1, 3])
def test_vq_scatter_kernel_with_other_thread_counts(threads):
    """Rows shared out among 1 and 3 threads (unequal parts), codes in the backward likewise: the same loss and
    gradients as with the default threads, up to the order of float32 sums."""
    head, _, hidden, target = scatter_case(torch.float32, 1001, 33, 77, 13, 1)
    reference = scatter_loss_and_grads(head, hidden, target)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        ours = scatter_loss_and_grads(head, hidden, target)
    finally:
        torch.set_num_threads(before)
    assert_close_all(ours, reference, 1e-6, torch.float32)


def test_vq_scatter_kernel_under_autocast_and_twice_through_a_retained_graph(monkeypatch):
    """Under bfloat16 autocast the code values are bfloat16 and the bias float32: the loss in float32, equal
    to the torch path's (which upcasts the spread logits); a retained graph's second backward gives the
    same gradients as the first."""
    from vqbench.heads import vq_kernels
    head, _, hidden, target = scatter_case(torch.float32, 1001, 33, 77, 13, 1)

    def run(retain=False):
        h = hidden.clone().requires_grad_(True)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = head.loss(h, target)
        wrt = [h, head.codebook, head.bias]
        first = torch.autograd.grad(loss, wrt, retain_graph=retain)
        if retain:
            assert all(torch.equal(a, b) for a, b in zip(first, torch.autograd.grad(loss, wrt)))
        return [loss.detach(), *first]
    ours = run(retain=True)
    assert ours[0].dtype == torch.float32
    monkeypatch.setattr(vq_kernels, "supports", lambda *tensors: False)
    reference = run()
    # the losses agree to float32; the gradients to bfloat16's rounding (the torch path adds the bfloat16
    # gradient rows onto each code in bfloat16, the kernel in float32)
    assert_close_all(ours[:1], reference[:1], 1e-5, torch.float32)
    for a, b in zip(ours[1:], reference[1:]):
        torch.testing.assert_close(a, b, atol=1e-2 * float(b.abs().max()), rtol=0)


def test_vq_scatter_kernel_at_extreme_logits(monkeypatch):
    """Logits in the thousands (exp's range many times over), a token with bias -inf (never predicted: its
    softmax and gradient exactly 0) and a NaN hidden state (NaN loss, as the torch path gives): loss and
    gradients as the float32 torch path's, which rounds the same logits."""
    from vqbench.heads import vq_kernels
    head, _, hidden, target = scatter_case(torch.float32, 97, 16, 40, 10, 1)
    with torch.no_grad():
        head.codebook.mul_(3e3)
        head.bias[5] = float("-inf")
        assert head.logits(hidden).abs().max() > 1e3
    target = torch.where(target == 5, 6, target)
    ours = scatter_loss_and_grads(head, hidden, target)
    assert torch.isfinite(ours[0]) and ours[3][5] == 0
    monkeypatch.setattr(vq_kernels, "supports", lambda *tensors: False)
    assert_close_all(ours, scatter_loss_and_grads(head, hidden, target), 1e-5, torch.float32)
    hidden[3, 0] = float("nan")
    assert torch.isnan(head.loss(hidden, target))
    monkeypatch.undo()
    assert torch.isnan(head.loss(hidden, target))


def test_vq_scatter_kernel_exp_matches_float64_over_its_range():
    """The kernel's vectorised exp of the shifted logits: one token (code 1, value x) beside a code of value 0
    that holds the column peak gives total = exp(x), within a few float32 ulps of float64 over [-86.5, 0];
    0 below -87 and at -inf, NaN for NaN."""
    from vqbench.heads import vq_kernels
    if not vq_kernels.available():
        pytest.skip("no C++ kernels here")
    x = torch.cat([torch.zeros(1), -torch.logspace(-8, math.log10(86.5), 5000)])
    values = torch.stack([torch.zeros_like(x), x])                                  # [K=2, N]
    n = x.shape[0]
    peak, total, own = vq_kernels.spread_cross_entropy(values, torch.ones(1, dtype=torch.int64), None, torch.zeros(2),
                                                       torch.zeros(n, dtype=torch.int64), torch.empty(1, n))
    assert torch.equal(peak, torch.zeros(n)) and torch.equal(own, x)
    torch.testing.assert_close(total.double(), torch.exp(x.double()), atol=0, rtol=3e-7)
    edge = torch.tensor([[0.0, 0.0, 0.0], [-87.5, float("-inf"), float("nan")]])
    _, total, _ = vq_kernels.spread_cross_entropy(edge, torch.ones(1, dtype=torch.int64), None, torch.zeros(2),
                                                  torch.zeros(3, dtype=torch.int64), torch.empty(1, 3))
    assert total[0] == 0 and total[1] == 0 and torch.isnan(total[2])


def test_vq_scatter_kernel_backward_uses_the_map_its_forward_used():
    """A set_mapping (in place) between a loss's forward and its backward: the gradients are those of the loss
    that was computed, with the old map's code groups, never the old logits paired with the new map's groups."""
    from vqbench.heads import vq_kernels
    if not vq_kernels.available():
        pytest.skip("no C++ kernels here")
    head, _, hidden, target = scatter_case(torch.float32, 1001, 33, 77, 13, 1)
    reference = scatter_loss_and_grads(head, hidden, target)
    h = hidden.clone().requires_grad_(True)
    head.zero_grad(set_to_none=True)
    loss = head.loss(h, target)
    old = head.mapping.clone()
    head.set_mapping((old + 5) % head.K)
    loss.backward()
    assert_close_all([loss.detach(), h.grad] + [p.grad for p in head.parameters()], reference, 1e-6, torch.float32)
    head.set_mapping(old)
