"""The contract every output layer follows.

An output head maps hidden states ``hidden`` [..., d] to a distribution over V tokens.
Subclasses implement the private, flat-shape methods (``_loss``, ``_target_log_prob``,
``_log_probs``, ``_predict``, ``_matmul_flops``, ``closed_form_num_parameters``); this
class validates the inputs, flattens leading dimensions and restores them.

Non-finite values, one policy for every head: ``loss``, ``target_log_prob``, ``log_probs`` and ``logits``
propagate NaN and inf as torch's own ops do (a NaN loss is visible where it is used). ``predict`` and
``sample``, which turn scores into token ids, never return an id chosen by a NaN: they raise a one-line
ValueError naming the argument, "hidden: contains NaN or infinite values", "<parameter>: holds NaN or
inf", or "hidden: logits overflow to inf/NaN in row i" for finite states whose scores overflow the dtype
(rows whose scores stay finite, however large, get the answer of their V log-probabilities). Any
temperature in (0, inf) is defined: scores are shifted by their row maximum before the division.

Mixed precision: under ``torch.autocast`` the losses and log-probabilities of lower-precision scores are
normalised in float32 and come back in float32, as ``F.cross_entropy``'s do.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Dict, NamedTuple, Optional, Tuple

import torch
from torch import nn

from vqbench.heads.frequency import default_token_counts, validate_token_counts

OPS = ("log_probs", "loss", "predict")
REDUCTIONS = ("mean", "sum", "none")


#: capabilities a head class may declare (``OutputHead.CAPABILITIES``)
CAPABILITIES = {
    "label_smoothing": "exact label smoothing without V-wide work beyond the loss's own",
    "logits": "all V logits in one step (head.logits)",
    "loss_only": "only the loss and the training step (log_probs, predict and sample raise NotImplementedError)",
}
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


@dataclass(frozen=True)
class Option:
    """One option of a head, declared once in the class's ``OPTIONS``: read from spec strings, checked, written
    into ``head.spec``, listed by ``compare --list-heads`` and in README's head table.

    type: bool, int, float, str or tuple (integers, "/"-separated in specs); default: the constructor's (None
    when unset or resolved from V and d, as ``default_text`` then says); choices: the allowed values of a str option; shown: always written
    in ``head.spec`` (the method's defining size, such as vq's K), even at its default; in_spec: False for
    Python-only keywords (tensors) that spec strings cannot carry.
    """

    name: str
    type: type
    default: Any = None
    doc: str = ""
    choices: Tuple[str, ...] = ()
    shown: bool = False
    in_spec: bool = True
    default_text: str = ""

    def parse(self, text: str):
        """A spec string's value text -> the option's value; errors name the option."""
        low = text.strip().lower()
        if self.type is bool:
            if low in _TRUE:
                return True
            if low in _FALSE:
                return False
            raise ValueError(f"{self.name}: expected 1/0 (or true/false), got {text!r}")
        if low == "none":
            return None
        try:
            value = tuple(int(part) for part in text.split("/")) if self.type is tuple else self.type(text.strip())
        except ValueError:
            raise ValueError(f"{self.name}: expected {_type_name(self.type)}, got {text!r}") from None
        if self.choices and value not in self.choices:
            raise ValueError(f"{self.name}: unknown value {value!r}; expected one of {', '.join(self.choices)}")
        return value

    def describe(self) -> str:
        """One line for CLI help and README: name, type, default and doc."""
        kind = "|".join(self.choices) if self.choices else _type_name(self.type)
        return f"{self.name} ({kind}, default {self.default_label()}): {self.doc}"

    def default_label(self) -> str:
        return self.default_text or ("none" if self.default is None else format_option(self.default))


def _type_name(kind) -> str:
    return {tuple: "ints separated by /", bool: "1/0"}.get(kind, getattr(kind, "__name__", str(kind)))


def format_option(value) -> str:
    """An option's value as spec text: booleans 1/0, sequences "/"-separated."""
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, (tuple, list)):
        return "/".join(str(v) for v in value)
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


class HeadOutput(NamedTuple):
    """What ``forward`` returns, as torch's AdaptiveLogSoftmaxWithLoss does.

    output: [...] log p(target | hidden); loss: scalar mean negative log-likelihood (nats).
    """

    output: torch.Tensor
    loss: torch.Tensor


class OutputHead(nn.Module):
    """Base class of all heads.

    Args:
        vocab_size: V, the number of tokens (>= 2).
        d_model: d, the width of the hidden states (>= 1).
        token_counts: optional [V] non-negative counts. Without it, token ids are taken as
            sorted by decreasing frequency and a Zipf law (count of id i proportional to
            1 / (i + 1)) stands in wherever a head needs frequencies.
    """

    #: registered name, set by ``register_head``
    name: str = ""
    #: the options spec strings and keywords may set, each declared once (see Option)
    OPTIONS: Tuple[Option, ...] = ()
    #: what the README table and the report call the method, the BibTeX keys (vqbench/references.bib) of its
    #: sources, one line for the README table and one paragraph for the report's Methods section
    TITLE: str = ""
    CITATIONS: Tuple[str, ...] = ()
    SUMMARY: str = ""
    METHOD: str = ""
    #: spec strings that show the options (README's table); SMALL_EXAMPLES are valid at V >= 97, d >= 16, and the
    #: test suite runs each through the whole contract; COMPARED: the specs ``compare`` measures by default
    #: (None: the bare name)
    EXAMPLES: Tuple[str, ...] = ()
    SMALL_EXAMPLES: Tuple[str, ...] = ()
    COMPARED: Optional[Tuple[str, ...]] = None
    #: keys of vqbench.heads.contract.CAPABILITIES this head has
    CAPABILITIES: frozenset = frozenset()
    #: where the head sits in tables, listings and the report (softmax, the baseline, first)
    ORDER: int = 100
    #: True when the head writes V-wide outputs fastest token-major (see ``new_output``)
    OUTPUT_TOKEN_MAJOR: bool = False

    def __init__(self, vocab_size: int, d_model: int, token_counts=None):
        super().__init__()
        OutputHead.check_options(vocab_size, d_model)
        self.vocab_size = int(vocab_size)
        self.d_model = int(d_model)
        if token_counts is None:
            counts = default_token_counts(self.vocab_size)
        else:
            counts = validate_token_counts(token_counts, self.vocab_size)
        # float64 on CPU, kept out of the module's buffers so that .to(dtype) leaves it exact
        self.token_counts = counts

    @classmethod
    def check_options(cls, vocab_size: int, d_model: int, **options) -> None:
        """Raise the constructor's ValueError/TypeError (naming the option) for option values that are wrong
        at this (V, d), without building anything: what a sweep runs over its whole grid before measuring.
        Subclasses check their own options here and call it from their constructor first."""
        _check_positive_int("vocab_size", vocab_size, minimum=2)
        _check_positive_int("d_model", d_model, minimum=1)

    @classmethod
    def estimate_parameters(cls, vocab_size: int, d_model: int, **options) -> Optional[int]:
        """The closed-form parameter count of the head these (valid) options would build, without building
        it (a memory guard runs before a head is allocated); None when a head cannot tell."""
        return None

    # ------------------------------------------------------------------ public API
    def loss(self, hidden: torch.Tensor, target: torch.Tensor, *, ignore_index: int = -100,
             reduction: str = "mean", label_smoothing: float = 0.0) -> torch.Tensor:
        """Negative log-likelihood in nats with F.cross_entropy's options; hidden [..., d], target [...].

        reduction: "mean" over the targets not equal to ``ignore_index`` (NaN when all are ignored, as
        F.cross_entropy), "sum", or "none" ([...] per token, 0 where ignored). label_smoothing eps:
        (1 - eps) NLL + eps (-mean over V of log p), for heads that compute the mean without V logits.
        """
        check_choice("reduction", reduction, REDUCTIONS)
        if isinstance(ignore_index, bool) or not isinstance(ignore_index, int):
            raise TypeError(f"ignore_index: expected an int, got {type(ignore_index).__name__}")
        if not isinstance(label_smoothing, (int, float)) or not 0.0 <= label_smoothing <= 1.0:
            raise ValueError(f"label_smoothing: must be a number in [0, 1], got {label_smoothing!r}")
        flat, lead = self._flatten_hidden(hidden)
        target = self._flatten_target(target, hidden, ignore_index=ignore_index)
        keep = target != ignore_index
        if torch.compiler.is_compiling():  # no data-dependent branch or shape: one graph
            return self._masked_loss(flat, target, keep, reduction, label_smoothing).reshape(
                lead if reduction == "none" else ())
        if reduction == "mean" and not label_smoothing and bool(keep.all()):
            return self._loss(flat, target)  # the plain path every head optimises
        kept_hidden, kept_target = flat[keep], target[keep]
        if kept_target.numel():
            per_token = self._token_nll(kept_hidden, kept_target)
            if label_smoothing:
                per_token = (1 - label_smoothing) * per_token - label_smoothing * self._mean_log_prob(kept_hidden)
        else:  # nothing to score: zeros that still belong to the graph, as F.cross_entropy's
            per_token = flat.sum() * 0 + flat.new_zeros(0)
        if reduction == "none":
            out = flat.new_zeros(target.shape).masked_scatter(keep, per_token)
            return out.reshape(lead)
        total = per_token.sum()
        return total if reduction == "sum" else total / keep.sum()

    def _masked_loss(self, flat, target, keep, reduction, label_smoothing):
        """``loss`` without data-dependent control flow, for compiled callers: every row is scored (an
        ignored one as token 0) and masked; flat [N, d], target and keep [N] -> [N] or a scalar."""
        per_token = self._token_nll(flat, target.where(keep, 0))
        if label_smoothing:
            per_token = (1 - label_smoothing) * per_token - label_smoothing * self._mean_log_prob(flat)
        per_token = per_token.where(keep, 0)
        if reduction == "none":
            return per_token
        total = per_token.sum()
        return total if reduction == "sum" else total / keep.sum()

    def target_log_prob(self, hidden: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """log p(target | hidden); hidden [..., d], target [...] -> [...]."""
        flat, lead = self._flatten_hidden(hidden)
        out = self._target_log_prob(flat, self._flatten_target(target, hidden))
        return out.reshape(lead)

    def log_probs(self, hidden: torch.Tensor, *, out: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Normalised log-probabilities over all V tokens; hidden [..., d] -> [..., V].

        out: optional [..., V] tensor of the head's dtype and device to write into (returned), for
        inference; ``new_output`` allocates one in the layout this head writes fastest, to reuse.
        """
        flat, lead = self._flatten_hidden(hidden)
        if out is None:
            return self._log_probs(flat).reshape(*lead, self.vocab_size)
        self._log_probs_into(flat, self._flatten_out(out, flat, lead))
        return out

    def predict(self, hidden: torch.Tensor) -> torch.Tensor:
        """The most probable token (int64); hidden [..., d] -> [...]."""
        flat, lead = self._flatten_hidden(hidden)
        with torch.no_grad():
            log_probs = self._guard_scores(flat)
        if log_probs is not None:
            return argmax_over_tokens(log_probs).reshape(lead)
        return self._predict(flat).reshape(lead)

    def sample(self, hidden: torch.Tensor, *, generator: Optional[torch.Generator] = None,
               temperature: float = 1.0) -> torch.Tensor:
        """One token per position (int64), drawn exactly from softmax(log p / temperature); hidden [...,
        d] -> [...]. Heads whose structure allows it draw without the V log-probabilities (VQ-Logits:
        a code, then a token inside it; the trees: a class or a path; adaptive: a cluster, then a token);
        the trees and adaptive do so at temperature 1 and draw from the V log-probabilities otherwise."""
        if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) \
                or not 0 < temperature < math.inf:
            raise ValueError(f"temperature: must be a finite number > 0, got {temperature!r}")
        if generator is not None and not isinstance(generator, torch.Generator):
            raise TypeError(f"generator: expected a torch.Generator, got {type(generator).__name__}")
        flat, lead = self._flatten_hidden(hidden)
        if generator is not None and generator.device.type != flat.device.type:
            raise ValueError(f"generator: on {generator.device} but hidden is on {flat.device}")
        with torch.no_grad():
            log_probs = self._guard_scores(flat)
            if log_probs is not None:
                return sample_rows(log_probs, generator, float(temperature)).reshape(lead)
            return self._sample(flat, generator, float(temperature)).reshape(lead)

    def logits(self, hidden: torch.Tensor, *, out: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Unnormalised V logits, for heads that produce them; hidden [..., d] -> [..., V].

        out: as in ``log_probs``.
        """
        flat, lead = self._flatten_hidden(hidden)
        if out is None:
            return self._logits(flat).reshape(*lead, self.vocab_size)
        self._logits_into(flat, self._flatten_out(out, flat, lead))
        return out

    def new_output(self, *lead: int) -> torch.Tensor:
        """An uninitialised [*lead, V] tensor (dtype and device of the head) laid out as this head
        writes it fastest: token-major, i.e. the transposed view of a [V, N] tensor, for heads that
        build their outputs token by token (``OUTPUT_TOKEN_MAJOR``), else row-major [N, V]."""
        for size in lead:
            _check_positive_int("lead", size, minimum=1)
        param = self._reference_parameter()
        n = math.prod(lead)
        if self.OUTPUT_TOKEN_MAJOR:
            buffer = torch.empty(self.vocab_size, n, dtype=param.dtype, device=param.device).T
        else:
            buffer = torch.empty(n, self.vocab_size, dtype=param.dtype, device=param.device)
        return buffer.reshape(*lead, self.vocab_size)

    def forward(self, hidden: torch.Tensor, target: torch.Tensor) -> HeadOutput:
        output = self.target_log_prob(hidden, target)
        return HeadOutput(output, -output.mean())

    def touched_parameters(self, target: torch.Tensor) -> int:
        """Parameter elements the loss of these targets [N] must read (and train must write gradients to):
        every parameter by default, since a normaliser over V reads every row; heads whose loss follows
        the targets' classes, paths or clusters count only the rows those reach."""
        return self.num_parameters()

    def least_sampled_parameters(self) -> int:
        """Parameter elements ``sample`` must read whatever it draws: every parameter by default (a normaliser
        over the V tokens, or over the K codes, reads every row); heads that draw a class, a cluster or a
        path first may draw the cheapest one for every token and read only its rows."""
        return self.num_parameters()

    def least_predicted_parameters(self) -> int:
        """Parameter elements ``predict`` must read whatever the hidden states: every parameter by default;
        a head whose argmax may stop after a first stage (adaptive: a shortlist token) reads only that stage."""
        return self.num_parameters()

    def materialised_bytes(self, num_tokens: int, op: str, element_size: int) -> Tuple[int, int]:
        """(bytes read, bytes written) of the intermediates ``op`` ("loss" or "train") must write to memory and
        read back by its algorithm, beyond its inputs, parameters and output: none by default (a fused or
        collapsed loss keeps them in cache); a head whose defining path materialises N x V logits pays them."""
        return 0, 0

    def quality_metrics(self, targets: torch.Tensor) -> dict:
        """Head-specific figures for a training summary, over the test targets [T] (none by default)."""
        return {}

    def num_parameters(self) -> int:
        """Trainable parameters, from the closed form in the class docstring."""
        return int(self.closed_form_num_parameters())

    def flops(self, num_tokens: int, op: str, target: Optional[torch.Tensor] = None) -> int:
        """Forward FLOPs of the matrix products (2 per multiply-add) for ``num_tokens`` tokens.

        op is one of "log_probs", "loss", "predict". For heads whose cost depends on the
        targets, ``target`` [num_tokens] gives the exact count of what runs; without it the
        expectation under the head's token frequencies is returned (rounded to an integer).
        """
        _check_positive_int("num_tokens", num_tokens, minimum=1)
        if op not in OPS:
            raise ValueError(f"op: unknown op {op!r}; expected one of {', '.join(OPS)}")
        if target is not None:
            target = self._flatten_target(target, None)
            if target.numel() != num_tokens:
                raise ValueError(
                    f"target: has {target.numel()} tokens but num_tokens={num_tokens}")
        return int(round(self._matmul_flops(int(num_tokens), op, target)))

    def largest_intermediate(self, num_tokens: int, op: str) -> int:
        """Elements of the largest tensor that ``op`` creates (analytic; default N x V)."""
        return num_tokens * self.vocab_size

    @property
    def spec(self) -> str:
        """The canonical spec string of this head: make_head(head.spec, V, d) builds an equal head."""
        return self.spec_of(self.vocab_size, self.d_model, self._spec_values())

    @classmethod
    def spec_of(cls, vocab_size: int, d_model: int, values: Dict[str, Any]) -> str:
        """The canonical spec of a head of this class built with option ``values`` at V, d: its name and, in
        OPTIONS order, every option that is ``shown`` or differs from the default it would have at V, d (so
        ``softmax:bias=0`` is ``softmax``, and ``lowrank:rank=128`` at d=512 is ``lowrank``)."""
        declared = {o.name: o.default for o in cls.OPTIONS if o.in_spec}
        resolved = cls.resolve_options(vocab_size, d_model, {**declared, **values})
        parts = []
        for option in cls.OPTIONS:
            if not option.in_spec:
                continue
            value = resolved.get(option.name)
            default = cls.resolve_options(vocab_size, d_model, {**resolved, option.name: option.default})
            if option.shown or value != default.get(option.name):
                parts.append(f"{option.name}={format_option(value)}")
        return cls.name + (":" + ",".join(parts) if parts else "")

    @classmethod
    def resolve_options(cls, vocab_size: int, d_model: int, values: Dict[str, Any]) -> Dict[str, Any]:
        """``values`` with every None an option resolves from V and d replaced by what the constructor would
        choose (heads whose defaults depend on V or d override this); nothing is checked here."""
        return dict(values)

    def reset_parameters(self) -> None:
        """Initialise every weight: the one place each head does (its constructor calls it)."""
        raise NotImplementedError(f"{type(self).__name__}: implement reset_parameters()")

    def extra_repr(self) -> str:
        return f"spec={self.spec!r}, vocab_size={self.vocab_size}, d_model={self.d_model}"

    # ------------------------------------------------------------------ non-finite guard
    def _guard_scores(self, hidden: torch.Tensor) -> Optional[torch.Tensor]:
        """Check hidden [N, d] and the parameters before ``predict`` or ``sample`` turn scores into ids.

        Returns None when no score can overflow (the bound of ``_score_bound``, with room for the sums a
        head adds to its scores), else the checked [N, V] log-probabilities to answer from.
        """
        peak = float(hidden.abs().amax())  # NaN or inf when any element is
        if not math.isfinite(peak):
            _check_finite(hidden)
        stats = self.parameter_stats()
        h_norm = peak * math.sqrt(self.d_model)  # >= every row's 2-norm
        limit = torch.finfo(hidden.dtype).max / 64
        if torch.is_autocast_enabled(hidden.device.type):  # the products may run in a narrower dtype
            limit = min(limit, torch.finfo(torch.get_autocast_dtype(hidden.device.type)).max / 64)
        if self._score_bound(h_norm, stats) < limit:
            return None
        log_probs = self._log_probs(hidden)
        top = log_probs.amax(dim=-1)  # NaN when a row holds one, -inf or +inf when it overflowed
        bad = (~torch.isfinite(top)).nonzero()
        if bad.numel():
            raise ValueError(f"hidden: logits overflow to inf/NaN in row {int(bad[0])} (of {hidden.shape[0]}); "
                             f"no token can be chosen for it")
        return log_probs

    def parameter_stats(self) -> dict:
        """{parameter name: (largest row 2-norm, Frobenius norm)} (a 1-d parameter's rows are its elements),
        in float64; raises ValueError naming a parameter that holds NaN or inf. Cached until a parameter
        changes (its storage or its version counter, which every in-place update advances)."""
        params = list(self.named_parameters())
        try:
            key = tuple((name, p.data_ptr(), p._version, p.dtype, tuple(p.shape)) for name, p in params)
        except RuntimeError:  # inference tensors keep no version counter: check every time
            key = None
        cached = self.__dict__.get("_parameter_stats_cache")
        if key is not None and cached is not None and cached[0] == key:
            return cached[1]
        stats = {}
        with torch.no_grad():
            for name, p in params:
                if p.numel() == 0:
                    stats[name] = (0.0, 0.0)
                    continue
                rows = p.detach().reshape(p.shape[0], -1) if p.dim() > 1 else p.detach().reshape(-1, 1)
                norms = torch.linalg.vector_norm(rows, dim=1, dtype=torch.float64)
                if not bool(torch.isfinite(norms).all()) and not bool(torch.isfinite(p).all()):
                    raise ValueError(f"{name}: holds NaN or inf (a head parameter); predict and sample cannot "
                                     f"choose a token from its scores")
                stats[name] = (float(norms.max()), float(norms.square().sum().sqrt()))
        self.__dict__["_parameter_stats_cache"] = (key, stats)
        return stats

    def _score_bound(self, h_norm: float, stats: dict) -> float:
        """An upper bound on |any score| this head computes for a hidden row of 2-norm <= h_norm, from the
        parameter_stats ``stats`` (Cauchy-Schwarz; partial sums of a product obey it too). Default inf:
        a head without a bound answers predict and sample from its checked V log-probabilities."""
        return math.inf

    # ------------------------------------------------------------------ to implement
    def _spec_values(self) -> dict:
        """{option: the value this head was built with} for every spec option of OPTIONS."""
        return {}

    def _loss(self, hidden: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return -self._target_log_prob(hidden, target).mean()

    def _sample(self, hidden: torch.Tensor, generator, temperature: float) -> torch.Tensor:
        """[N] tokens; default: from the V log-probabilities."""
        return sample_rows(self._log_probs(hidden), generator, temperature)

    def _token_nll(self, hidden: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """[N] negative log-likelihood per token, differentiable (default: from _target_log_prob)."""
        return -self._target_log_prob(hidden, target)

    def _mean_log_prob(self, hidden: torch.Tensor) -> torch.Tensor:
        """[N] mean over the V tokens of log p, for label smoothing; heads that can do it without V logits
        override this."""
        raise NotImplementedError(f"label_smoothing: {self.spec} cannot compute the mean log-probability over "
                                  f"V without the V logits; use label_smoothing=0 with this head")

    def _target_log_prob(self, hidden, target):  # pragma: no cover - abstract
        raise NotImplementedError

    def _log_probs(self, hidden):  # pragma: no cover - abstract
        raise NotImplementedError

    def _predict(self, hidden: torch.Tensor) -> torch.Tensor:
        return argmax_over_tokens(self._log_probs(hidden))

    def _logits(self, hidden):
        raise NotImplementedError(f"{self.name}: this head does not produce V logits in one step")

    def _log_probs_into(self, hidden, out):
        """Write log_probs into out [N, V]; heads with a direct write override this copy."""
        out.copy_(self._log_probs(hidden))

    def _logits_into(self, hidden, out):
        out.copy_(self._logits(hidden))

    def _matmul_flops(self, num_tokens: int, op: str, target) -> float:  # pragma: no cover
        raise NotImplementedError

    def closed_form_num_parameters(self) -> int:  # pragma: no cover - abstract
        raise NotImplementedError

    # ------------------------------------------------------------------ validation
    def _reference_parameter(self) -> torch.Tensor:
        return next(self.parameters())

    def _flatten_hidden(self, hidden):
        if not isinstance(hidden, torch.Tensor):
            raise TypeError(f"hidden: expected a torch.Tensor, got {type(hidden).__name__}")
        if not hidden.is_floating_point():
            raise TypeError(f"hidden: expected a floating-point tensor, got dtype {hidden.dtype}")
        if hidden.dim() < 1 or hidden.shape[-1] != self.d_model:
            raise ValueError(
                f"hidden: expected shape [..., {self.d_model}] (d_model={self.d_model}), "
                f"got {list(hidden.shape)}")
        if hidden.numel() == 0:
            raise ValueError(f"hidden: needs at least one token, got shape {list(hidden.shape)}")
        if hidden.device.type == "meta":
            raise ValueError("hidden: on the meta device, which holds no values; vqbench heads compute on "
                             "real devices (cpu, cuda)")
        param = self._reference_parameter()
        if hidden.dtype != param.dtype:
            raise TypeError(
                f"hidden: dtype {hidden.dtype} does not match the head's parameters "
                f"({param.dtype}); convert one of them, e.g. head.to({hidden.dtype})")
        if hidden.device != param.device:
            raise ValueError(
                f"hidden: on {hidden.device} but the head's parameters are on {param.device}")
        lead = hidden.shape[:-1]
        return hidden.reshape(-1, self.d_model), lead

    def _flatten_out(self, out, hidden, lead):
        """out [*lead, V] -> its [N, V] view, checked; hidden is the flattened [N, d] input."""
        if not isinstance(out, torch.Tensor):
            raise TypeError(f"out: expected a torch.Tensor, got {type(out).__name__}")
        if tuple(out.shape) != (*lead, self.vocab_size):
            raise ValueError(f"out: expected shape {[*lead, self.vocab_size]} (hidden's leading shape, "
                             f"vocab_size={self.vocab_size}), got {list(out.shape)}")
        if out.dtype != hidden.dtype or out.device != hidden.device:
            raise TypeError(f"out: expected dtype {hidden.dtype} on {hidden.device} (as hidden), "
                            f"got {out.dtype} on {out.device}")
        if torch.is_grad_enabled() and (hidden.requires_grad or any(p.requires_grad for p in self.parameters())):
            raise RuntimeError("out: writing into a given tensor does not record gradients; call under "
                               "torch.no_grad() or torch.inference_mode(), or leave out unset")
        try:
            flat = out.view(-1, self.vocab_size)
        except RuntimeError:
            raise ValueError(f"out: its strides {out.stride()} cannot be viewed as [N, V] without a copy; "
                             f"allocate it with new_output()") from None
        if _overlaps_itself(flat):
            raise ValueError("out: has elements that share memory (an expanded or overlapping view); "
                             "allocate it with new_output()")
        for name, other in [("hidden", hidden), *self.named_parameters(), *self.named_buffers()]:
            if _shares_memory(flat, other):
                raise ValueError(f"out: shares memory with {name}; the output would overwrite an input "
                                 f"while it is read; allocate it with new_output()")
        return flat

    def _flatten_target(self, target, hidden, ignore_index=None):
        if not isinstance(target, torch.Tensor):
            raise TypeError(f"target: expected a torch.Tensor, got {type(target).__name__}")
        if target.is_floating_point() or target.is_complex() or target.dtype == torch.bool:
            raise TypeError(f"target: expected an integer tensor (int64), got dtype {target.dtype}")
        if hidden is not None:
            if tuple(target.shape) != tuple(hidden.shape[:-1]):
                raise ValueError(
                    f"target: expected shape {list(hidden.shape[:-1])} to match hidden "
                    f"{list(hidden.shape)}, got {list(target.shape)}")
            if target.device != hidden.device:
                raise ValueError(f"target: on {target.device} but hidden is on {hidden.device}")
        flat = target.reshape(-1).long()
        if torch.compiler.is_compiling():
            # reading the range back to Python would break a compiled caller's graph; compiled code
            # relies on the gathers' own index checks instead
            return flat
        scored = flat if ignore_index is None else flat[flat != ignore_index]
        if scored.numel():
            low, high = int(scored.min()), int(scored.max())
            if low < 0 or high >= self.vocab_size:
                raise ValueError(
                    f"target: token ids must lie in [0, {self.vocab_size}) "
                    f"(vocab_size={self.vocab_size}){'' if ignore_index is None else f' or be ignore_index={ignore_index}'}"
                    f", got values in [{low}, {high}]")
        return flat


def refuse_other_structure(module: nn.Module, state_dict: dict, prefix: str, names) -> None:
    """For a module whose buffers ``names`` encode a structure built from token_counts (classes, a tree):
    raise when a state_dict carries other values, since the module's derived tables would not follow."""
    for name in names:
        key = prefix + name
        if key in state_dict:
            mine, theirs = getattr(module, name), state_dict[key]
            if tuple(theirs.shape) != tuple(mine.shape) or not torch.equal(theirs.to(mine.device), mine):
                raise ValueError(f"state_dict: {key} differs from this head's: the state was trained with a head "
                                 f"built from other token_counts; build the head with the same token_counts")


def _check_finite(hidden: torch.Tensor) -> None:
    """predict and sample turn a NaN row into a token id: refuse it instead of returning an arbitrary one."""
    if not bool(torch.isfinite(hidden).all()):
        raise ValueError("hidden: contains NaN or infinite values; no token can be chosen for such a row")


def _overlaps_itself(t: torch.Tensor) -> bool:
    """True unless every element of t has its own memory (strides nested by size, none zero)."""
    dims = sorted((stride, size) for stride, size in zip(t.stride(), t.shape) if size > 1)
    span = 1
    for stride, size in dims:
        if stride < span:
            return True
        span = stride * size
    return False


def _shares_memory(a: torch.Tensor, b: torch.Tensor) -> bool:
    """True when the memory ranges of a and b intersect (same storage, overlapping byte ranges)."""
    if a.device != b.device or a.numel() == 0 or b.numel() == 0:
        return False
    if a.untyped_storage().data_ptr() != b.untyped_storage().data_ptr():
        return False

    def byte_range(t):
        start = t.data_ptr()
        extent = sum((size - 1) * stride for size, stride in zip(t.shape, t.stride())) + 1
        return start, start + extent * t.element_size()

    (a0, a1), (b0, b1) = byte_range(a), byte_range(b)
    return a0 < b1 and b0 < a1


def _check_positive_int(name: str, value, minimum: int = 1) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name}: expected an int, got {type(value).__name__} {value!r}")
    if value < minimum:
        raise ValueError(f"{name}: must be >= {minimum}, got {value}")


def check_int_option(name: str, value, minimum: int = 1, maximum: Optional[int] = None,
                     why_max: str = "") -> int:
    """Validate an integer option and return it; errors name the option."""
    _check_positive_int(name, value, minimum)
    if maximum is not None and value > maximum:
        raise ValueError(f"{name}: must be <= {maximum}{why_max}, got {value}")
    return int(value)


def check_choice(name: str, value, choices) -> str:
    if value not in choices:
        raise ValueError(f"{name}: unknown option {value!r}; expected one of {', '.join(choices)}")
    return value


class LogitsHead(OutputHead):
    """A head that produces all V logits in one step (``_logits``) and normalises them.

    Heads that compute their logits wider than V (a padded matrix, see vqbench.heads.padding) implement
    ``_wide_logits`` [N, W >= V], -inf beyond V, and the normalising paths below use it whole.
    """

    def _wide_logits(self, hidden):
        """[N, W] logits, W >= V, the columns beyond V -inf (default: the V logits)."""
        return self._logits(hidden)

    def _log_probs(self, hidden):
        logits = self._wide_logits(hidden)
        if logits.requires_grad:
            return torch.log_softmax(logits, dim=-1)[:, :self.vocab_size]
        return log_softmax_rows_(logits)[:, :self.vocab_size]  # no second N x V tensor to allocate and first-touch

    def _log_probs_into(self, hidden, out):
        self._logits_into(hidden, out)
        log_softmax_rows_(out)

    def _target_log_prob(self, hidden, target):
        logits = self._wide_logits(hidden)
        return logits.gather(1, target[:, None]).squeeze(1) - torch.logsumexp(logits, dim=-1)

    def _loss(self, hidden, target):
        return torch.nn.functional.cross_entropy(self._wide_logits(hidden), target)

    def _mean_log_prob(self, hidden):
        logits = self._wide_logits(hidden)  # the V logits the NLL of a logits head computes anyway
        return logits[:, :self.vocab_size].mean(dim=-1) - torch.logsumexp(logits, dim=-1)

    def _predict(self, hidden):
        return argmax_over_tokens(self._wide_logits(hidden))


def linear_into(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], out: torch.Tensor) -> None:
    """out = x W^T (+ b), written into out; x [N, k], weight [V, k], bias [V] or None, out [N, V]."""
    if bias is None:
        torch.mm(x, weight.T, out=out)
    else:
        torch.addmm(bias, x, weight.T, out=out)


def log_softmax_rows_(x: torch.Tensor) -> torch.Tensor:
    """Normalise the rows of x [N, V] in place (no autograd) and return it. Contiguous rows go
    through log_softmax's out= directly: it reads each row before writing it."""
    if x.is_contiguous():
        return torch.log_softmax(x, dim=-1, out=x)
    return x.copy_(torch.log_softmax(x, dim=-1))


def argmax_over_tokens(scores: torch.Tensor) -> torch.Tensor:
    """[N, V] -> [N] argmax (first of ties). Heads that build a token-major [V, N] tensor return its
    transposed view; reducing that layout along its contiguous rows is much faster."""
    if scores.dim() == 2 and scores.stride(0) == 1 and scores.stride(1) != 1:
        return scores.T.argmax(dim=0)
    return scores.argmax(dim=-1)


def sample_rows(scores: torch.Tensor, generator, temperature: float = 1.0) -> torch.Tensor:
    """[N] one index per row of scores [N, M], drawn from softmax(scores / temperature).

    The rows are shifted to a maximum of 0 before the division, so that no temperature in (0, inf)
    overflows: the best score stays 0 and the others go to -inf at worst (probability 0). A temperature
    that float32 cannot hold as a non-zero divisor of the shifted scores divides in float64."""
    shifted = scores - scores.amax(dim=-1, keepdim=True)
    wide = not 1e-30 < temperature < 1e30
    shifted = shifted.double() if wide else shifted.float()
    if temperature != 1.0:
        shifted = shifted / temperature
    return torch.multinomial(torch.softmax(shifted, dim=-1), 1, generator=generator).squeeze(1)


def upcast_scores(scores: torch.Tensor) -> torch.Tensor:
    """Scores [...] a matmul returned in float16/bfloat16 under torch.autocast, in float32 for their
    normalisation (as F.cross_entropy does under autocast); any other scores unchanged."""
    if scores.dtype in (torch.float16, torch.bfloat16) and torch.is_autocast_enabled(scores.device.type):
        return scores.float()
    return scores


def uniform(n: int, like: torch.Tensor, generator) -> torch.Tensor:
    """[n] uniform numbers in [0, 1) in float64 on like's device."""
    return torch.rand(n, generator=generator, dtype=torch.float64, device=like.device)
