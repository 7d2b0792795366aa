"""Hierarchical softmax: two-level class-based (default) or a binary Huffman tree."""

from __future__ import annotations

import math

from vqbench.head import OutputHead, check_choice, check_int_option
from vqbench.registry import register_head

TREES = ("class", "huffman")


@register_head("hierarchical")
class HierarchicalSoftmax(OutputHead):
    """Hierarchical softmax over a tree built from token frequencies.

    tree="class": p(w|h) = p(c(w)|h) p(w|c(w),h) with C frequency-binned classes (see
    baselines.class_tree). Parameters (closed form): C * d + V * d.
    tree="huffman": a binary Huffman tree over token counts (see baselines.huffman_tree).
    Parameters (closed form): (V - 1) * d.

    Shapes: hidden [N, d] -> log_probs [N, V]; target [N] -> target_log_prob [N].

    Options:
        tree: "class" (default) or "huffman".
        classes: C for tree="class", 1 <= C <= V (default round(sqrt(V))).
    """

    OPTION_TYPES = {"tree": str, "classes": int}
    OUTPUT_TOKEN_MAJOR = True  # both trees build log_probs token-major, [V, N]

    def __init__(self, vocab_size, d_model, *, tree="class", classes=None, token_counts=None):
        super().__init__(vocab_size, d_model, token_counts)
        self.tree_kind = check_choice("tree", tree, TREES)
        # each tree's module is imported where it is built, so that a row's code fingerprint
        # (vqbench.fingerprint) covers the tree it measured and not the other one
        if tree == "huffman":
            from baselines.huffman_tree import HuffmanTree
            if classes is not None:
                raise ValueError("classes: only used with tree=class")
            self.tree = HuffmanTree(self.vocab_size, self.d_model, self.token_counts)
        else:
            from baselines.class_tree import ClassTree
            if classes is None:
                classes = max(1, round(math.sqrt(self.vocab_size)))
            classes = check_int_option("classes", classes, minimum=1, maximum=self.vocab_size,
                                       why_max=" (vocab_size)")
            self.tree = ClassTree(self.vocab_size, self.d_model, self.token_counts, classes)

    def _spec_values(self):
        return {"tree": self.tree_kind, "classes": self.tree.num_classes if self.tree_kind == "class" else None}

    def touched_parameters(self, target):
        return self.tree.touched_parameters(target.to(self._reference_parameter().device))

    def least_sampled_parameters(self) -> int:
        return self.tree.least_sampled_parameters()

    def closed_form_num_parameters(self) -> int:
        return self.tree.num_parameters()

    def _target_log_prob(self, hidden, target):
        return self.tree.target_log_prob(hidden, target)

    def _log_probs(self, hidden):
        return self.tree.log_probs(hidden)

    def _predict(self, hidden):
        # CPU only: its per-class winners are read on the host, a sync a GPU path avoids
        if self.tree_kind == "class" and self.tree.ids_in_frequency_order and hidden.device.type == "cpu":
            return self.tree.predict(hidden)
        return super()._predict(hidden)

    def _sample(self, hidden, generator, temperature):
        if temperature != 1.0:  # p^(1/T) does not factor over the tree's levels
            return super()._sample(hidden, generator, temperature)
        return self.tree.sample(hidden, generator)

    def _log_probs_into(self, hidden, out):
        if self.tree_kind == "class" and out.T.is_contiguous():
            self.tree.log_probs(hidden, out_t=out.T)
        else:
            out.copy_(self.tree.log_probs(hidden))

    def largest_intermediate(self, num_tokens, op):
        return self.tree.largest_intermediate(num_tokens, op)

    def _matmul_flops(self, num_tokens, op, target):
        return self.tree.flops(num_tokens, op, target)
