"""VQ-Logits (arXiv 2505.10202): a K x d codebook and a token -> code map."""

from __future__ import annotations

import math

import torch
from torch import nn

from vqbench.heads import vq_kernels
from vqbench.heads.fresh import fresh_empty
from vqbench.heads.contract import LogitsHead, Option, check_choice, check_int_option, sample_rows, uniform, upcast_scores
from vqbench.heads.mapping import MAPPINGS, build_mapping, validate_mapping
from vqbench.heads.registry import register_head

PATHS = ("collapsed", "scatter")


@register_head("vq")
class VQLogits(LogitsHead):
    """VQ-Logits output layer.

    Codebook logits ``L = h C^T`` [N, K] are scattered to the vocabulary by the fixed map M:
    logit(i) = L[:, M(i)] (+ b_i with ``bias=1``, our extension), then a softmax over V.

    Shapes: hidden [N, d] -> log_probs [N, V]; codebook C [K, d]; mapping M [V] int64 buffer.

    Parameters (closed form): K * d, plus V with ``bias=1``.

    Loss paths, both exact: "scatter" (the paper's) materialises the N x V logits; "collapsed" uses
    log sum_i exp(logit_i) = logsumexp_k(L[k] + log n_k), n_k the number of tokens of code k (with a bias:
    the logsumexp of the biases in code k), so the loss costs O(N K d) and no V-sized tensor. With
    bias_init="unigram" the choice inside a code starts at the unigram shares.

    An empty code (no token maps to it) carries no probability: its term is -inf in the
    collapsed sum and its codebook row gets no gradient.
    """

    OPTIONS = (
        Option("K", int, None, "codebook size, 1 <= K <= V", shown=True, default_text="min(1024, V)"),
        Option("mapping", str, "frequency", "the token -> code map (kmeans needs `embeddings`; Python also takes a "
                                            "[V] tensor)", choices=MAPPINGS),
        Option("path", str, "collapsed", "the loss path, both exact: scatter materialises the N x V logits, "
                                         "collapsed costs O(N K d)", choices=PATHS),
        Option("bias", bool, False, "a per-token bias b [V] (our extension; the paper has none)"),
        Option("bias_init", str, "zeros", "zeros, or unigram: b starts at the log of each token's count",
               choices=("zeros", "unigram")),
        Option("seed", int, 0, "seed of the random mapping and of k-means"),
        Option("codebook_init", str, "auto", "auto: the k-means centroids when there are any, else random",
               choices=("auto", "random", "centroids")),
        Option("embeddings", torch.Tensor, None, "[V, d] token embeddings that kmeans clusters", in_spec=False),
    )
    TITLE = "VQ-Logits"
    CITATIONS = ("shao2025vqlogits",)
    SUMMARY = ("arXiv 2505.10202: a K x d codebook, a fixed map from each token to one code, codebook logits "
               "scattered to V")
    METHOD = ("A K x d codebook and a fixed map from each token to one code; codebook logits h C^T are scattered "
              "to the V tokens [shao2025vqlogits]. Tokens sharing a code share a logit, so within a code the "
              "distribution is uniform. vqbench's `collapsed` loss path uses this to compute the exact loss in "
              "O(N K d).")
    EXAMPLES = ("vq:K=1024", "vq:K=1024,mapping=kmeans", "vq:K=1024,bias=1,bias_init=unigram", "vq:K={256,1024}")
    SMALL_EXAMPLES = ("vq:K=10", "vq:K=10,path=scatter", "vq:K=10,bias=1", "vq:K=10,bias=1,path=scatter",
                      "vq:K=10,mapping=random", "vq:K=10,mapping=contiguous", "vq:K=10,mapping=kmeans",
                      "vq:K=10,mapping=kmeans,codebook_init=random")
    CAPABILITIES = frozenset({"label_smoothing", "logits"})
    ORDER = 4
    OUTPUT_TOKEN_MAJOR = True

    @classmethod
    def check_options(cls, vocab_size, d_model, *, K=None, mapping="frequency", path="collapsed", bias=False,
                      bias_init="zeros", seed=0, codebook_init="auto", embeddings=None, token_counts=None,
                      **_):
        super().check_options(vocab_size, d_model)
        if K is not None:
            check_int_option("K", K, minimum=1, maximum=vocab_size,
                             why_max=" (vocab_size; K > V leaves codes that no token uses)")
        check_choice("path", path, PATHS)
        check_choice("codebook_init", codebook_init, ("auto", "random", "centroids"))
        check_choice("bias_init", bias_init, ("zeros", "unigram"))
        if bias_init != "zeros" and not bias:
            raise ValueError("bias_init: needs bias=1")
        if isinstance(mapping, str):
            check_choice("mapping", mapping, MAPPINGS)
            if mapping == "kmeans" and embeddings is None:
                raise ValueError("embeddings: mapping='kmeans' needs embeddings of shape [vocab_size, d]")
        elif not isinstance(mapping, torch.Tensor):
            raise TypeError(f"mapping: expected one of {', '.join(MAPPINGS)} or a [V] integer tensor, "
                            f"got {type(mapping).__name__}")
        if codebook_init == "centroids" and not (isinstance(mapping, str) and mapping == "kmeans"):
            raise ValueError("codebook_init: 'centroids' needs mapping='kmeans'")

    @classmethod
    def estimate_parameters(cls, vocab_size, d_model, *, K=None, bias=False, **_):
        return (min(1024, vocab_size) if K is None else K) * d_model + (vocab_size if bias else 0)

    def __init__(self, vocab_size, d_model, *, K=None, mapping="frequency", path="collapsed",
                 bias=False, bias_init="zeros", seed=0, codebook_init="auto", embeddings=None,
                 token_counts=None):
        self.check_options(vocab_size, d_model, K=K, mapping=mapping, path=path, bias=bias, bias_init=bias_init,
                           seed=seed, codebook_init=codebook_init, embeddings=embeddings)
        super().__init__(vocab_size, d_model, token_counts)
        self.K = self.resolve_options(self.vocab_size, self.d_model, {"K": K})["K"]
        self.path = path
        centroids = None
        if isinstance(mapping, str):
            codes, centroids = build_mapping(mapping, self.vocab_size, self.K, self.token_counts,
                                             seed=seed, embeddings=embeddings)
        else:
            codes = validate_mapping(mapping, self.vocab_size, self.K)
        # the k-means centroids a reset starts the codebook from (not a buffer: not part of the state)
        self._centroids = centroids if codebook_init != "random" else None
        self.codebook = nn.Parameter(torch.empty(self.K, self.d_model))
        self.bias = nn.Parameter(torch.empty(self.vocab_size)) if bias else None
        self.bias_init, self.seed, self.codebook_init = bias_init, seed, codebook_init
        self.reset_parameters()

        self._groups = self._bias_draw = None  # caches of sample's V-wide tables (see _grouped_tokens)
        self.register_buffer("mapping", codes)
        self.register_buffer("code_sizes", torch.empty(self.K, dtype=torch.int64))
        self.register_buffer("first_token", torch.empty(self.K, dtype=torch.int64))
        self.set_mapping(codes)
        # how the head was built, for its spec (a given tensor or a later set_mapping: "custom")
        self.mapping_name = mapping if isinstance(mapping, str) else "custom"

    @classmethod
    def resolve_options(cls, vocab_size, d_model, values):
        if values.get("K") is None:
            values = {**values, "K": min(1024, vocab_size)}
        return values

    @torch.no_grad()
    def reset_parameters(self):
        """The codebook uniform in +-1/sqrt(d) (nn.Linear's default, as the softmax head), or the k-means
        centroids; the bias at zeros or at the centred log unigram counts."""
        bound = 1.0 / math.sqrt(self.d_model)
        self.codebook.uniform_(-bound, bound)
        if self._centroids is not None:
            self.codebook.copy_(self._centroids)
        if self.bias is not None and self.bias_init == "unigram":  # zero counts get the smallest count's bias
            counts = self.token_counts.clamp(min=float(self.token_counts[self.token_counts > 0].min()))
            log_counts = counts.log()
            self.bias.copy_((log_counts - log_counts.mean()).to(self.bias.dtype))
        elif self.bias is not None:
            self.bias.zero_()

    @torch.no_grad()
    def set_mapping(self, codes: torch.Tensor) -> None:
        """Replace the token -> code map ([V] integers in [0, K)) and the per-code tables derived from it."""
        codes = validate_mapping(codes, self.vocab_size, self.K).to(self.mapping.device)
        self.mapping.copy_(codes)
        self.code_sizes.copy_(torch.bincount(codes, minlength=self.K))
        self.first_token.fill_(self.vocab_size)
        self.first_token.scatter_reduce_(0, codes, torch.arange(self.vocab_size, device=codes.device), "amin")
        self.mapping_name = "custom"

    def _spec_values(self):
        return {"K": self.K, "mapping": self.mapping_name, "path": self.path, "bias": self.bias is not None,
                "bias_init": self.bias_init, "seed": self.seed, "codebook_init": self.codebook_init}

    def _score_bound(self, h_norm, stats):
        # code logits, plus a bias and the log-mass of a code (at most 2 max|b| + log V)
        bias = stats["bias"][0] if self.bias is not None else 0.0
        return h_norm * stats["codebook"][0] + 2 * bias + math.log(self.vocab_size)

    def closed_form_num_parameters(self) -> int:
        return self.K * self.d_model + (self.vocab_size if self.bias is not None else 0)

    def codebook_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """[N, d] -> [N, K]."""
        return hidden @ self.codebook.T

    def _spread(self, code_values_t: torch.Tensor, out=None) -> torch.Tensor:
        """[K, N] per-code values -> [V, N] per-token values, value[i] = code_values[M(i)] (+ b_i).

        Gathered as whole rows (each row one contiguous copy of N values), with the bias added in the
        same layout; callers wanting [N, V] take the transposed view. On CPU this runs close to the cost
        of writing the output once; indexing the columns of an [N, V] tensor, ``(h C^T)[:, M]``, is
        several times slower. With ``out`` [N, V] the gather writes into it (row by row when out is the
        transposed view of a [V, N] tensor, as ``new_output`` makes). Without out and without autograd
        the result is a fresh tensor advised onto huge pages before the gather first touches it
        (vqbench.heads.fresh): traffic N V written (plus K N read), with one page fault per 2 MiB
        instead of per 4 KiB. With a bias and no autograd, gather and bias are one C++ pass
        (vqbench.heads.vq_kernels: N V written once, where index_select then add_ move 3 N V).
        """
        if out is not None and out.dtype != code_values_t.dtype:  # bfloat16 products under autocast, out in float32
            code_values_t = code_values_t.to(out.dtype)
        if self._fused_bias(code_values_t, out):  # one pass: gather and bias (vqbench.heads.vq_kernels)
            if out is None:
                out_t = fresh_empty((self.vocab_size, code_values_t.shape[1]), dtype=code_values_t.dtype,
                                    device=code_values_t.device)
            else:
                out_t = out.T
            vq_kernels.spread_bias(code_values_t, self.mapping, self.bias, out_t)
            return out_t
        if out is None and code_values_t.requires_grad:
            spread = RowSpread.apply(code_values_t, self.mapping)
        elif out is None:  # a fresh [V, N] result, first touched on huge pages (vqbench.heads.fresh)
            fresh = fresh_empty((self.vocab_size, code_values_t.shape[1]), dtype=code_values_t.dtype,
                                device=code_values_t.device)
            spread = torch.index_select(code_values_t, 0, self.mapping, out=fresh)
        elif out.T.is_contiguous():
            spread = torch.index_select(code_values_t, 0, self.mapping, out=out.T)
        else:
            spread = torch.index_select(code_values_t.T, 1, self.mapping, out=out).T
        if self.bias is not None:
            spread.add_(self.bias[:, None])  # in place: index_select's backward does not need its output
        return spread

    def _fused_bias(self, code_values_t, out) -> bool:
        """True when the biased spread can run as one C++ pass: a bias, no gradient wanted, CPU tensors the
        kernel takes, and a [V, N] row-major destination (fresh, or out as the transposed view of one)."""
        if self.bias is None or (torch.is_grad_enabled() and (code_values_t.requires_grad or self.bias.requires_grad)):
            return False
        if out is not None and not out.T.is_contiguous():
            return False
        return vq_kernels.supports(code_values_t, self.bias)  # the mapping lies beside the bias

    def _token_major_logits(self, hidden):
        """[N, d] -> [V, N] logits, each token's row contiguous: the layout the spread writes, in which the
        scatter path normalises over dim 0 (no copy of a transposed view; its gradient's scatter onto the
        codebook adds whole rows)."""
        return self._spread(self.codebook @ hidden.T)

    def _logits(self, hidden):
        return self._token_major_logits(hidden).T

    def _logits_into(self, hidden, out):
        self._spread(self.codebook @ hidden.T, out)

    def _log_probs(self, hidden):
        return self._spread(self._normalised_code_logits_t(hidden)).T

    def _log_probs_into(self, hidden, out):
        self._spread(self._normalised_code_logits_t(hidden), out)

    def _normalised_code_logits_t(self, hidden):
        """[N, d] -> [K, N] codebook logits minus each token's log-normaliser: normalising the K codes
        before the spread writes the V-wide output once, instead of by a scatter and a log_softmax."""
        code_logits_t = self.codebook @ hidden.T
        # log Z = logsumexp_k(L_k + log n_k) in one scratch [K, N] tensor, a third faster than
        # torch.logsumexp's temporaries; the peak is only a shift, so it takes no gradient
        scratch = code_logits_t + self.code_log_mass(code_logits_t.dtype)[:, None]
        peak = scratch.detach().amax(dim=0)
        log_z = scratch.sub_(peak).exp_().sum(dim=0).log_().add_(peak)
        return code_logits_t.sub_(log_z)

    def code_log_mass(self, dtype) -> torch.Tensor:
        """[K]: log n_k, or with a bias logsumexp of the biases of code k (-inf when empty)."""
        if self.bias is None:
            return self.code_sizes.to(dtype).log()
        return self._code_mass(self.bias)[1]

    def _code_mass(self, values: torch.Tensor):
        """values [V] -> ([V] exp(v_i - the largest v in i's code), [K] logsumexp of v over each code, -inf
        when empty). The per-code peak is only a shift, so it takes no gradient."""
        peak = self._code_peak(values.detach())
        weights = torch.exp(values - peak[self.mapping])
        return weights, peak + torch.zeros_like(peak).scatter_add(0, self.mapping, weights).log()

    def _code_peak(self, values: torch.Tensor) -> torch.Tensor:
        """values [V] -> [K]: the largest value in each code (-inf when empty)."""
        peak = torch.full((self.K,), float("-inf"), dtype=values.dtype, device=values.device)
        return peak.scatter_reduce(0, self.mapping, values, "amax", include_self=False)

    def _log_normaliser(self, code_logits):
        return torch.logsumexp(code_logits + self.code_log_mass(code_logits.dtype), dim=-1)

    def _target_log_prob(self, hidden, target):
        if self.path == "scatter":  # the paper's path: every logit, normalised over V in the [V, N] layout
            logits_vn = upcast_scores(self._token_major_logits(hidden))
            return logits_vn.gather(0, target[None]).squeeze(0) - torch.logsumexp(logits_vn, dim=0)
        code_logits = upcast_scores(self.codebook_logits(hidden))
        own = code_logits.gather(1, self.mapping[target][:, None]).squeeze(1)
        if self.bias is not None:
            own = own + self.bias[target]
        return own - self._log_normaliser(code_logits)

    def _mean_log_prob(self, hidden):
        # mean over V of (L[M(i)] + b_i) - log Z = (sum_k n_k L_k) / V + mean(b) - log Z: no V logits
        code_logits = upcast_scores(self.codebook_logits(hidden))
        mean = code_logits @ self.code_sizes.to(code_logits.dtype) / self.vocab_size
        if self.bias is not None:
            mean = mean + self.bias.mean()
        return mean - self._log_normaliser(code_logits)

    def _loss(self, hidden, target):
        if self.path == "scatter":
            code_logits_t = self.codebook @ hidden.T                                 # [K, N]
            if vq_kernels.supports(code_logits_t, *([] if self.bias is None else [self.bias])):
                return SpreadCrossEntropy.apply(code_logits_t, self.bias, target.contiguous(), self)
            return TokenMajorCrossEntropy.apply(upcast_scores(self._spread(code_logits_t)), target)
        return -self._target_log_prob(hidden, target).mean()

    def _predict(self, hidden):
        # argmax over V without the V logits: inside a code the winner is fixed (its first token id,
        # or with a bias the first id of its largest bias), so only each code's winner competes
        winner, winner_bias = self._code_winners()
        code_logits = self.codebook_logits(hidden)
        if winner_bias is not None:
            code_logits = code_logits + winner_bias
        code_logits = code_logits.masked_fill(self.code_sizes == 0, float("-inf"))
        best = code_logits.max(dim=-1, keepdim=True).values
        candidates = torch.where(code_logits == best, winner, self.vocab_size)
        return candidates.min(dim=-1).values

    def _sample(self, hidden, generator, temperature):
        # p(token i) ~ exp((L[M(i)] + b_i) / T): a code k from the K-way softmax of (L_k + B_k) / T + log
        # sum_{i in k} exp((b_i - B_k) / T), B_k the largest bias in k, then a token inside k by exp((b_i -
        # B_k) / T) (uniformly without a bias): exact at every temperature. Per call only K- and N-wide work:
        # the V-wide tables are cached until the mapping (or the bias, or T) changes. Scores are shifted to a
        # row maximum of 0 and divided in float64, so that no T in (0, inf) overflows.
        members, start = self._grouped_tokens()
        sizes = self.code_sizes
        scores = self.codebook_logits(hidden).double()
        if self.bias is None:
            log_within = sizes.double().log()
        else:
            cumulative, log_within, peak = self._bias_tables(members, temperature)
            scores = scores + peak
        scaled = (scores - scores.amax(dim=1, keepdim=True)) / temperature + log_within
        code = sample_rows(scaled, generator)
        u = uniform(code.shape[0], hidden, generator)
        if self.bias is None:
            offset = torch.clamp((u * sizes[code]).long(), max=sizes[code] - 1)
            return members[start[code] + offset]
        below = torch.where(start > 0, cumulative[(start - 1).clamp(min=0)], 0.0)
        total = cumulative[(start + sizes - 1).clamp(min=0)] - below
        index = torch.searchsorted(cumulative, below[code] + u * total[code], right=True)
        index = torch.minimum(torch.maximum(index, start[code]), start[code] + sizes[code] - 1)
        return members[index]

    def _grouped_tokens(self):
        """([V] the tokens grouped by code, [K] where each code's group starts), sorted once per mapping: keyed
        by the buffers' storage and version, which set_mapping, load_state_dict and .to() all change."""
        key = (self.mapping.data_ptr(), self.mapping._version, self.code_sizes.data_ptr(), self.code_sizes._version)
        if self._groups is None or self._groups[0] != key:
            members = torch.argsort(self.mapping, stable=True)
            self._groups = (key, members, torch.cumsum(self.code_sizes, 0) - self.code_sizes)
        return self._groups[1:]

    def _bias_tables(self, members, temperature):
        """([V] cumulative exp((b_i - B_k) / T) over the grouped tokens, [K] the log of each code's sum of those,
        [K] B_k the largest bias in code k), float64, once per (mapping, bias, T): decoding with a fixed bias
        pays the V-wide scan once, not per token."""
        key = (self._groups[0], self.bias.data_ptr(), self.bias._version, temperature)
        if self._bias_draw is None or self._bias_draw[0] != key:
            b = self.bias.detach().double()
            peak = self._code_peak(b)
            weights = torch.exp((b - peak[self.mapping]) / temperature)  # in [0, 1], 1 for each code's best
            log_within = torch.zeros_like(peak).scatter_add(0, self.mapping, weights).log()
            self._bias_draw = (key, torch.cumsum(weights[members], 0), log_within, peak)
        return self._bias_draw[1:]

    def _code_winners(self):
        """([K] token id, [K] bias or None): the token an argmax over V picks inside each code."""
        if self.bias is None:
            return self.first_token, None
        b = self.bias.detach()
        peak = self._code_peak(b)
        ids = torch.where(b == peak[self.mapping], torch.arange(self.vocab_size, device=b.device), self.vocab_size)
        winner = torch.full((self.K,), self.vocab_size, dtype=torch.int64, device=b.device)
        return winner.scatter_reduce(0, self.mapping, ids, "amin"), peak

    def materialised_bytes(self, num_tokens, op, element_size):
        """path=scatter (the paper's) writes the N x V logits once, the copy its backward reads; the least its
        loss must move: it can sum their exponentials as it writes them (the column peaks come from the K x N
        code values), so the loss reads none of them back, and the training step reads them once to add each
        token's softmax row onto its code's gradient, writing no N x V gradient. The collapsed path holds no
        V-wide tensor."""
        if self.path != "scatter" or op not in ("loss", "train"):
            return 0, 0
        size = num_tokens * self.vocab_size * element_size
        return (size if op == "train" else 0), size

    def quality_metrics(self, targets: torch.Tensor) -> dict:
        """Without bias: the mean over targets [T] of log n (n: the tokens sharing the target's code), the
        nats each target pays for the uniform choice inside its code. Exactly, perplexity = (perplexity of
        the codes) x exp(within_code_nats): no codebook removes the second factor, only the mapping can."""
        if self.bias is not None:
            return {}
        nats = float(self.code_sizes[self.mapping[targets]].double().log().mean())
        return {"within_code_nats": nats, "within_code_ppl_factor": math.exp(nats)}

    def largest_intermediate(self, num_tokens, op):
        if (op == "loss" and self.path == "collapsed") or op == "predict":
            return num_tokens * self.K
        return num_tokens * self.vocab_size

    def _matmul_flops(self, num_tokens, op, target):
        return 2 * num_tokens * self.d_model * self.K


class TokenMajorCrossEntropy(torch.autograd.Function):
    """Mean cross-entropy of logits in the spread's token-major layout: logits [V, N], target [N] -> [] in the
    logits' dtype (sums in float32 or wider), = F.cross_entropy(logits.T, target).

    torch's cross-entropy normalises the last dimension, so over the transposed view it first copies the
    N x V logits to row-major; over dim 1 of a [1, V, N] tensor its kernel is slower still. Here every pass
    runs along whole rows: the column peaks, exp(logits - peak) once (kept for backward: its softmax is
    that tensor scaled per column), their column sums. Traffic, forward: reads the logits twice, writes and
    reads the exponentials once; backward: reads them and writes the gradient once.
    """

    @staticmethod
    def forward(ctx, logits, target):
        peak = logits.amax(dim=0)                                        # [N]
        # a fresh [V, N] tensor costs more in first-touch page faults than in arithmetic (vqbench.heads.fresh)
        weights = torch.sub(logits, peak, out=fresh_empty(logits.shape, dtype=logits.dtype,
                                                          device=logits.device)).exp_()  # [V, N]
        wide = torch.promote_types(logits.dtype, torch.float32)        # float32, or float64 for float64
        total = weights.sum(dim=0).to(wide)  # [N]; reduced precision sums accumulate in float32 anyway
        own = logits.gather(0, target[None]).squeeze(0).to(wide)
        ctx.save_for_backward(weights, total, target)
        return (total.log() + peak.to(wide) - own).mean().to(logits.dtype)

    @staticmethod
    def backward(ctx, grad):
        weights, total, target = ctx.saved_tensors
        per_token = grad.to(total.dtype) / weights.shape[1]                      # d mean / d (each token's loss)
        # out of place: a retained graph may run this backward again from the same weights
        grad_logits = torch.mul(weights, (per_token / total).to(weights.dtype),
                                out=fresh_empty(weights.shape, dtype=weights.dtype, device=weights.device))
        columns = torch.arange(weights.shape[1], device=weights.device)
        grad_logits[target, columns] -= per_token.to(weights.dtype)
        return grad_logits, None


class SpreadCrossEntropy(torch.autograd.Function):
    """path=scatter's mean cross-entropy from the K x N code values in two C++ passes (vqbench.heads.vq_kernels):
    the forward writes the [V, N] logits once (kept for backward, the paper's materialised logits) and sums their
    exponentials as it writes them; the backward reads them once and adds each token's softmax row onto its code's
    gradient row. = TokenMajorCrossEntropy(spread(values) + bias), with sums in float32.

    code_values_t [K, N] (float32 or bfloat16), bias [V] or None, target [N], head (its mapping and code groups)
    -> [] in the scores' dtype after upcast_scores (float32 under bf16 autocast). The logits are held in the code
    values' dtype (as the spread writes them; upcast_scores' float32 copy is exact, so not made).
    """

    @staticmethod
    def forward(ctx, code_values_t, bias, target, head):
        if bias is None:
            code_peak = torch.zeros(head.K).masked_fill_(head.code_sizes == 0, float("-inf"))
        else:
            code_peak = head._code_peak(bias.detach()).float()
        logits = fresh_empty((head.vocab_size, code_values_t.shape[1]), dtype=code_values_t.dtype, device="cpu")
        peak, total, own = vq_kernels.spread_cross_entropy(code_values_t, head.mapping, bias, code_peak, target,
                                                           logits)
        # Backward needs the map this forward used: taken now, so a set_mapping (in place) before backward
        # cannot pair these logits with another map's code groups.
        members, start = head._grouped_tokens()
        ctx.save_for_backward(logits, peak, total, target, head.mapping[target], members, start,
                              head.code_sizes.clone())
        ctx.has_bias, ctx.bias_dtype = bias is not None, None if bias is None else bias.dtype
        loss = (total.log() + peak - own).mean()
        autocast = code_values_t.dtype == torch.bfloat16 and torch.is_autocast_enabled("cpu")
        return loss.to(torch.float32 if autocast else code_values_t.dtype)

    @staticmethod
    def backward(ctx, grad):
        logits, peak, total, target, target_code, members, start, code_sizes = ctx.saved_tensors
        step = (grad.float() / target.shape[0]).expand(target.shape[0]).contiguous()  # d mean / d each token's loss
        grad_values, row_sum = vq_kernels.spread_cross_entropy_backward(
            logits, members, start, code_sizes, target_code, peak, step / total, step)
        grad_bias = None
        if ctx.has_bias and ctx.needs_input_grad[1]:
            targets_part = torch.zeros_like(row_sum).index_add_(0, target, step)
            grad_bias = (row_sum - targets_part).to(ctx.bias_dtype)
        return grad_values if ctx.needs_input_grad[0] else None, grad_bias, None, None


class RowSpread(torch.autograd.Function):
    """code_values [K, N], mapping [V] -> [V, N] = code_values.index_select(0, mapping), the result first
    touched on huge pages (vqbench.heads.fresh) as the no-grad spread's is; backward adds each token's row of
    the gradient onto its code's row (index_add_, whole rows), as index_select's own backward does."""

    @staticmethod
    def forward(ctx, code_values, mapping):
        ctx.save_for_backward(mapping)
        ctx.num_codes = code_values.shape[0]
        out = fresh_empty((mapping.shape[0], code_values.shape[1]), dtype=code_values.dtype,
                          device=code_values.device)
        return torch.index_select(code_values, 0, mapping, out=out)

    @staticmethod
    def backward(ctx, grad):
        mapping, = ctx.saved_tensors
        grad_codes = grad.new_zeros(ctx.num_codes, grad.shape[1])
        return grad_codes.index_add_(0, mapping, grad), None
