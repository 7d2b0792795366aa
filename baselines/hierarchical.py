"""Hierarchical softmax: two-level class-based (default) or a binary Huffman tree."""

from __future__ import annotations

import math

from vqbench.heads.contract import OutputHead, Option, check_choice, check_int_option
from vqbench.heads.registry import register_head

TREES = ("class", "huffman")


@register_head("hierarchical")
class HierarchicalSoftmax(OutputHead):
    """Hierarchical softmax over a tree built from token frequencies.

    tree="class": p(w|h) = p(c(w)|h) p(w|c(w),h) with C frequency-binned classes (see
    baselines.class_tree). Parameters (closed form): C * d + V * d.
    tree="huffman": a binary Huffman tree over token counts (see baselines.huffman_tree).
    Parameters (closed form): (V - 1) * d. ``sparse_grad``: the node vectors' gradient holds the touched
    rows only (a sparse COO tensor), as word2vec and fastText update only the nodes on the targets' paths.

    Shapes: hidden [N, d] -> log_probs [N, V]; target [N] -> target_log_prob [N].
    """

    OPTIONS = (
        Option("tree", str, "class", "two-level frequency-binned classes, or a binary Huffman tree", choices=TREES),
        Option("classes", int, None, "C for tree=class, 1 <= C <= V", default_text="round(sqrt(V))"),
        Option("sparse_grad", bool, False, "tree=huffman: the node vectors' gradient as a sparse tensor of the rows "
                                           "the targets' paths touched (as nn.Embedding's sparse=True; for "
                                           "optimisers that take sparse gradients, e.g. SGD, SparseAdam)"),
    )
    TITLE = "hierarchical softmax"
    CITATIONS = ("mikolov2011extensions", "morin2005hierarchical", "mikolov2013distributed", "joulin2017bag")
    SUMMARY = ("two-level class-based softmax with frequency-binned classes (Mikolov et al. 2011), or a binary "
               "Huffman tree (word2vec, fastText)")
    METHOD = ("Two-level class-based softmax p(w|h) = p(c(w)|h) p(w|c(w),h) with frequency-binned classes "
              "[mikolov2011extensions], and a binary tree over Huffman codes [morin2005hierarchical, "
              "mikolov2013distributed, joulin2017bag], whose loss follows each target's path.")
    EXAMPLES = ("hierarchical", "hierarchical:classes=200", "hierarchical:tree=huffman",
                "hierarchical:tree=huffman,sparse_grad=1")
    SMALL_EXAMPLES = ("hierarchical", "hierarchical:classes=5", "hierarchical:tree=huffman",
                      "hierarchical:tree=huffman,sparse_grad=1")
    COMPARED = ("hierarchical", "hierarchical:tree=huffman")
    ORDER = 2
    OUTPUT_TOKEN_MAJOR = True  # both trees build log_probs token-major, [V, N]

    @classmethod
    def check_options(cls, vocab_size, d_model, *, tree="class", classes=None, sparse_grad=False, token_counts=None,
                      **_):
        super().check_options(vocab_size, d_model)
        check_choice("tree", tree, TREES)
        if tree == "huffman" and classes is not None:
            raise ValueError("classes: only used with tree=class")
        if tree != "huffman" and sparse_grad:
            raise ValueError("sparse_grad: only used with tree=huffman (the class tree reads every word vector of "
                             "a reached class)")
        if classes is not None:
            check_int_option("classes", classes, minimum=1, maximum=vocab_size, why_max=" (vocab_size)")

    @classmethod
    def estimate_parameters(cls, vocab_size, d_model, *, tree="class", classes=None, **_):
        if tree == "huffman":
            return (vocab_size - 1) * d_model
        classes = max(1, round(math.sqrt(vocab_size))) if classes is None else classes
        return (classes + vocab_size) * d_model

    def __init__(self, vocab_size, d_model, *, tree="class", classes=None, sparse_grad=False, token_counts=None):
        self.check_options(vocab_size, d_model, tree=tree, classes=classes, sparse_grad=sparse_grad)
        super().__init__(vocab_size, d_model, token_counts)
        self.tree_kind = tree
        # each tree's module is imported where it is built, so that a row's code fingerprint
        # (vqbench.measuring.fingerprint) covers the tree it measured and not the other one
        if tree == "huffman":
            from baselines.huffman_tree import HuffmanTree
            self.tree = HuffmanTree(self.vocab_size, self.d_model, self.token_counts, sparse_grad=bool(sparse_grad))
        else:
            from baselines.class_tree import ClassTree
            classes = self.resolve_options(self.vocab_size, self.d_model, {"classes": classes})["classes"]
            classes = check_int_option("classes", classes, minimum=1, maximum=self.vocab_size,
                                       why_max=" (vocab_size)")
            self.tree = ClassTree(self.vocab_size, self.d_model, self.token_counts, classes)
        self.reset_parameters()

    @classmethod
    def resolve_options(cls, vocab_size, d_model, values):
        if values.get("classes") is None and values.get("tree", "class") == "class":
            values = {**values, "classes": max(1, round(math.sqrt(vocab_size)))}
        return values

    def reset_parameters(self):
        self.tree.reset_parameters()

    def _spec_values(self):
        return {"tree": self.tree_kind, "classes": self.tree.num_classes if self.tree_kind == "class" else None,
                "sparse_grad": self.tree_kind == "huffman" and self.tree.sparse_grad}

    def touched_parameters(self, target):
        return self.tree.touched_parameters(target.to(self._reference_parameter().device))

    def least_sampled_parameters(self) -> int:
        return self.tree.least_sampled_parameters()

    def _score_bound(self, h_norm, stats):
        return h_norm * max(row for row, _ in stats.values())  # one product with rows of the tree's weights

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
        if self.tree_kind == "huffman":
            return self.tree.predict(hidden)
        return super()._predict(hidden)

    def _sample(self, hidden, generator, temperature):
        if temperature != 1.0:  # p^(1/T) does not factor over the tree's levels
            return super()._sample(hidden, generator, temperature)
        return self.tree.sample(hidden, generator)

    def _log_probs_into(self, hidden, out):
        if out.T.is_contiguous():  # token-major, as new_output lays it out: written in place
            self.tree.log_probs(hidden, out_t=out.T)
        else:
            out.copy_(self.tree.log_probs(hidden))

    def largest_intermediate(self, num_tokens, op):
        return self.tree.largest_intermediate(num_tokens, op)

    def _matmul_flops(self, num_tokens, op, target):
        return self.tree.flops(num_tokens, op, target)
