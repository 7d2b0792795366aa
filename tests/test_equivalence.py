"""Fast paths against plain paths and independent references."""

import pytest
import torch
import torch.nn.functional as F

from conftest import D, N, V, build, inputs, largest_saved_for_backward


def loss_and_grads(head, hidden, target):
    hidden = hidden.clone().requires_grad_(True)
    head.zero_grad()
    loss = head.loss(hidden, target)
    loss.backward()
    grads = {name: p.grad.clone() for name, p in head.named_parameters()}
    return loss.detach(), hidden.grad, grads


def assert_same(a, b, atol):
    loss_a, hidden_a, grads_a = a
    loss_b, hidden_b, grads_b = b
    assert torch.allclose(loss_a, loss_b, atol=atol, rtol=0)
    assert torch.allclose(hidden_a, hidden_b, atol=atol, rtol=0)
    assert grads_a.keys() == grads_b.keys()
    for name in grads_a:
        assert torch.allclose(grads_a[name], grads_b[name], atol=atol, rtol=0), name


#: (head, dtype, atol) of the chunked-loss equivalence: softmax and low-rank share the chunked linear cross-entropy
CHUNKED_CASES = [(base, dtype, atol) for base in ("softmax", "lowrank:rank=5")
                 for dtype, atol in ((torch.float64, 1e-12), (torch.float32, 1e-5))] + \
                [("lowrank:rank=5", torch.bfloat16, 2e-2)]


@pytest.mark.parametrize("chunk", [1, 7, 40, 1000])
@pytest.mark.parametrize("bias", [0, 1])
@pytest.mark.parametrize("base,dtype,atol", CHUNKED_CASES)
def test_chunked_loss_equals_plain(base, chunk, bias, dtype, atol):
    sep = "," if ":" in base else ":"
    plain = build(f"{base}{sep}bias={bias}", dtype)
    chunked = build(f"{base}{sep}bias={bias},chunk={chunk}", dtype)
    chunked.load_state_dict(plain.state_dict())
    if bias:
        with torch.no_grad():
            plain.bias.normal_()
            chunked.bias.copy_(plain.bias)
    hidden, target = inputs(dtype)
    assert_same(loss_and_grads(chunked, hidden, target), loss_and_grads(plain, hidden, target), atol)


def test_chunked_softmax_under_no_grad_and_scaled_backward():
    plain, chunked = build("softmax"), build("softmax:chunk=8")
    chunked.load_state_dict(plain.state_dict())
    hidden, target = inputs()
    with torch.no_grad():
        assert torch.allclose(chunked.loss(hidden, target), plain.loss(hidden, target))
    (3.0 * chunked.loss(hidden, target)).backward()
    (3.0 * plain.loss(hidden, target)).backward()
    assert torch.allclose(chunked.weight.grad, plain.weight.grad)


@pytest.mark.parametrize("spec", ["softmax:chunk=7", "lowrank:rank=5,chunk=7"])
def test_chunked_loss_saves_no_token_by_vocab_tensor(spec):
    head = build(spec)
    hidden, target = inputs()
    assert 0 < largest_saved_for_backward(lambda: head.loss(hidden.requires_grad_(True), target).backward()) < N * V


@pytest.mark.parametrize("options", ["K=10", "K=10,bias=1", "K=10,mapping=random", "K=1", "K=97"])
def test_vq_collapsed_equals_scatter(options):
    collapsed = build(f"vq:{options},path=collapsed")
    scatter = build(f"vq:{options},path=scatter")
    scatter.load_state_dict(collapsed.state_dict())
    if "bias" in options:
        with torch.no_grad():
            collapsed.bias.normal_()
            scatter.bias.copy_(collapsed.bias)
    hidden, target = inputs()
    assert_same(loss_and_grads(collapsed, hidden, target), loss_and_grads(scatter, hidden, target), 1e-12)


@pytest.mark.parametrize("bias", [0, 1])
def test_vq_scatter_equals_per_token_reference(bias):
    head = build(f"vq:K=10,path=scatter,bias={bias}")
    if bias:
        with torch.no_grad():
            head.bias.normal_()
    hidden, target = inputs()
    codebook, mapping = head.codebook.detach(), head.mapping
    for n in range(N):
        logits = torch.stack([
            hidden[n] @ codebook[mapping[i]] + (head.bias[i].detach() if bias else 0.0)
            for i in range(V)])
        reference = logits[target[n]] - torch.logsumexp(logits, 0)
        assert torch.allclose(head.target_log_prob(hidden[n:n + 1], target[n:n + 1])[0], reference)
        assert torch.allclose(head.log_probs(hidden[n:n + 1])[0], torch.log_softmax(logits, 0))


@pytest.mark.parametrize("bias", [0, 1])
def test_vq_scatter_loss_copies_no_token_by_vocab_tensor(bias):
    """The paper's path normalises the [V, N] logits the spread writes where they lie: neither the loss nor
    its backward copies an N x V tensor into another layout (a copy_ or clone of N V elements)."""
    head = build(f"vq:K=10,path=scatter,bias={bias}")
    hidden, target = inputs()
    hidden.requires_grad_(True)
    with torch.profiler.profile(record_shapes=True) as prof:
        head.loss(hidden, target).backward()
    copies = [e for e in prof.events() if e.name in ("aten::copy_", "aten::clone", "aten::contiguous")
              and any(len(s) and torch.Size(s).numel() == N * V for s in e.input_shapes)]
    assert copies == []


def test_vq_empty_code_takes_no_mass_and_no_gradient():
    mapping = torch.arange(V) % 4          # codes 4..9 are empty
    head = build("vq:K=10", mapping=mapping)
    hidden, target = inputs()
    log_probs = head.log_probs(hidden)
    assert torch.logsumexp(log_probs, 1).abs().max() < 1e-10
    head.loss(hidden, target).backward()
    assert head.codebook.grad[4:].abs().max() == 0
    assert head.codebook.grad[:4].abs().sum() > 0
    assert torch.equal(head.predict(hidden), log_probs.argmax(1))
    # tokens of one code share a probability
    assert torch.allclose(log_probs[:, 0], log_probs[:, 4])


def test_vq_frequency_mapping_gives_frequent_tokens_own_codes():
    head = build("vq:K=10")
    sizes = head.code_sizes
    assert (sizes > 0).all() and sizes.sum() == V
    assert sizes[0] == 1 and sizes[-1] == sizes.max()
    assert torch.equal(head.mapping, torch.sort(head.mapping).values)  # ids are frequency ranks


def test_vq_kmeans_centroids_initialise_codebook():
    emb = torch.randn(V, D)
    head = build("vq:K=10,mapping=kmeans", embeddings=emb)
    # every codebook row is the mean of the embeddings mapped to it
    for k in range(10):
        assert torch.allclose(head.codebook[k].float(), emb[head.mapping == k].mean(0), atol=1e-5)


def test_softmax_log_probs_match_torch():
    head = build("softmax:bias=1")
    hidden, target = inputs()
    logits = hidden @ head.weight.T + head.bias
    assert torch.allclose(head.log_probs(hidden), F.log_softmax(logits, 1))
    assert torch.allclose(head.loss(hidden, target), F.cross_entropy(logits, target))


@pytest.mark.parametrize("permuted", [False, True])
def test_adaptive_log_probs_match_torch_with_and_without_autograd(permuted):
    """The inference path (tails in token groups, written once) equals torch's log_prob, as the
    differentiable path does; a small scratch forces several groups per cluster."""
    counts = torch.rand(V, generator=torch.Generator().manual_seed(5)) + 0.1 if permuted else None
    head = build("adaptive:cutoffs=10/40,div_value=2", token_counts=counts)
    head.SCRATCH_ELEMENTS = 200
    assert head.permuted is permuted
    hidden, _ = inputs()
    reference = head.asm.log_prob(hidden)
    if permuted:
        reference = reference[:, head.rank_of_token]
    with_graph = head.log_probs(hidden)
    assert with_graph.requires_grad
    with torch.no_grad():
        assert torch.allclose(head.log_probs(hidden), reference, atol=1e-12, rtol=0)
    assert torch.allclose(with_graph, reference, atol=1e-12, rtol=0)


@pytest.mark.parametrize("spec", ["adaptive", "hierarchical", "hierarchical:tree=huffman", "vq:K=10"])
def test_unsorted_token_counts_follow_the_tokens(spec):
    """Relabelling the tokens (with their counts) relabels the distribution: the head sorts ids itself."""
    counts = 1.0 / torch.arange(1, V + 1, dtype=torch.float64)
    perm = torch.randperm(V, generator=torch.Generator().manual_seed(3))  # new id of rank r: perm[r]
    shuffled = torch.empty_like(counts)
    shuffled[perm] = counts
    sorted_head = build(spec, token_counts=counts)
    shuffled_head = build(spec, token_counts=shuffled)
    state = sorted_head.state_dict()
    if spec.startswith("hierarchical"):  # per-token parameters are indexed by token id
        for name in state:
            if name.endswith("word_weight"):
                state[name] = state[name][torch.argsort(perm)]
    shuffled_head.load_state_dict({k: v for k, v in state.items() if k in dict(shuffled_head.named_parameters())},
                                  strict=False)
    hidden, target = inputs()
    expected = sorted_head.log_probs(hidden)
    got = shuffled_head.log_probs(hidden)
    assert torch.allclose(got[:, perm], expected, atol=1e-10)
    assert torch.allclose(shuffled_head.target_log_prob(hidden, perm[target]),
                          sorted_head.target_log_prob(hidden, target), atol=1e-10)
    # vq tokens of one code tie, so compare the probability of the prediction, not its id
    best = got.gather(1, shuffled_head.predict(hidden)[:, None]).squeeze(1)
    assert torch.allclose(best, expected.max(1).values, atol=1e-10)


def test_huffman_paths_are_shorter_for_frequent_tokens():
    head = build("hierarchical:tree=huffman")
    depth = head.tree.depth
    assert depth[0] <= depth[V // 2] <= depth[-1]
    # Kraft equality for a full binary tree
    assert torch.isclose((2.0 ** -depth.double()).sum(), torch.tensor(1.0, dtype=torch.float64))


def test_class_tree_classes_nonempty_and_cover_vocab():
    head = build("hierarchical:classes=5")
    sizes = head.tree.class_sizes
    assert len(sizes) == 5 and (sizes > 0).all() and sizes.sum() == V
    assert sizes[0] <= sizes[-1]


@pytest.mark.parametrize("dtype,atol", [(torch.float64, 1e-12), (torch.float32, 1e-5), (torch.bfloat16, 3e-2)])
def test_token_major_cross_entropy_equals_torch(dtype, atol):
    """vq's scatter-path loss over [V, N] logits against F.cross_entropy over the [N, V] view (in float64),
    loss and gradient, and a retained graph's second backward gives the same gradient."""
    from vqbench.heads.vq import TokenMajorCrossEntropy
    generator = torch.Generator().manual_seed(3)
    logits = (4 * torch.randn(V, N, generator=generator, dtype=torch.float64)).to(dtype).requires_grad_(True)
    target = torch.randint(0, V, (N,), generator=generator)
    loss = TokenMajorCrossEntropy.apply(logits, target)
    assert loss.dtype == dtype
    first, = torch.autograd.grad(loss, logits, retain_graph=True)
    second, = torch.autograd.grad(loss, logits)
    reference_logits = logits.detach().double().requires_grad_(True)
    reference = F.cross_entropy(reference_logits.T, target)
    reference.backward()
    assert abs(float(loss) - float(reference)) <= atol * max(1.0, float(reference))
    assert torch.allclose(first.double(), reference_logits.grad, atol=atol / N, rtol=atol)
    assert torch.equal(first, second)


def test_row_spread_equals_index_select():
    from vqbench.heads.vq import RowSpread
    generator = torch.Generator().manual_seed(4)
    values = torch.randn(10, N, generator=generator, dtype=torch.float64, requires_grad=True)
    mapping = torch.randint(0, 10, (V,), generator=generator)
    weights = torch.randn(V, N, generator=generator, dtype=torch.float64)
    spread = RowSpread.apply(values, mapping)
    assert torch.equal(spread, values.detach().index_select(0, mapping))
    grad, = torch.autograd.grad((spread * weights).sum(), values)
    reference, = torch.autograd.grad((values.index_select(0, mapping) * weights).sum(), values)
    assert torch.allclose(grad, reference, atol=1e-12, rtol=0)
