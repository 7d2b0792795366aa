"""A small language-model body whose output layer is any vqbench head."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class LSTMBody(nn.Module):
    """Embedding(V, d) -> LSTM(d, d) x layers -> dropout. ids [B, L] -> hidden [B, L, d]."""

    def __init__(self, vocab_size: int, d_model: int, layers: int = 2, dropout: float = 0.2):
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, d_model)
        self.lstm = nn.LSTM(d_model, d_model, layers, dropout=dropout if layers > 1 else 0.0, batch_first=True)
        self.dropout = nn.Dropout(dropout)
        nn.init.uniform_(self.embedding.weight, -0.1, 0.1)

    def forward(self, ids, state=None):
        out, state = self.lstm(self.dropout(self.embedding(ids)), state)
        return self.dropout(out), state


class Block(nn.Module):
    """A pre-LayerNorm decoder block: x + attn(LN(x)), then x + MLP(LN(x)). x [B, L, d] -> [B, L, d]."""

    def __init__(self, d_model: int, heads: int, dropout: float):
        super().__init__()
        self.heads, self.dropout = heads, dropout
        self.ln1, self.ln2 = nn.LayerNorm(d_model), nn.LayerNorm(d_model)
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.proj = nn.Linear(d_model, d_model)
        self.mlp = nn.Sequential(nn.Linear(d_model, 4 * d_model), nn.GELU(), nn.Linear(4 * d_model, d_model))
        self.drop = nn.Dropout(dropout)

    def forward(self, x):
        batch, length, width = x.shape
        q, k, v = self.qkv(self.ln1(x)).view(batch, length, 3, self.heads, width // self.heads).permute(2, 0, 3, 1, 4)
        attended = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout if self.training else 0.0,
                                                  is_causal=True)
        x = x + self.drop(self.proj(attended.transpose(1, 2).reshape(batch, length, width)))
        return x + self.drop(self.mlp(self.ln2(x)))


class GPTBody(nn.Module):
    """Token + learned position embeddings -> pre-LN decoder blocks (causal scaled_dot_product_attention,
    GELU MLP) -> LayerNorm. ids [B, L] (L <= context) -> (hidden [B, L, d], None): no state carries over
    between windows, each window is its own context.

    Initialisation as GPT-2: normal(0, 0.02), the residual projections scaled by 1/sqrt(2 layers).
    """

    def __init__(self, vocab_size: int, d_model: int, layers: int = 4, heads: int = 4, context: int = 128,
                 dropout: float = 0.1):
        super().__init__()
        if d_model % heads:
            raise ValueError(f"heads: d_model {d_model} does not split into {heads} heads")
        self.context = context
        self.embedding = nn.Embedding(vocab_size, d_model)
        self.position = nn.Embedding(context, d_model)
        self.blocks = nn.ModuleList(Block(d_model, heads, dropout) for _ in range(layers))
        self.ln = nn.LayerNorm(d_model)
        self.dropout = nn.Dropout(dropout)
        for name, p in self.named_parameters():
            if p.dim() == 2:
                residual = name.endswith("proj.weight") or name.endswith("mlp.2.weight")
                nn.init.normal_(p, 0.0, 0.02 / math.sqrt(2 * layers) if residual else 0.02)
            elif name.endswith("bias"):
                nn.init.zeros_(p)

    def forward(self, ids, state=None):
        if ids.shape[1] > self.context:
            raise ValueError(f"ids: windows of {ids.shape[1]} tokens exceed the context of {self.context}")
        positions = torch.arange(ids.shape[1], device=ids.device)
        x = self.dropout(self.embedding(ids) + self.position(positions))
        for block in self.blocks:
            x = block(x)
        return self.ln(x), None


def make_body(kind: str, vocab_size: int, d_model: int, layers: int, dropout: float, heads: int = 4,
              context: int = 128) -> nn.Module:
    """'lstm' -> LSTMBody, 'gpt' -> GPTBody (context: its longest window, the training BPTT length)."""
    if kind == "lstm":
        return LSTMBody(vocab_size, d_model, layers, dropout)
    if kind == "gpt":
        return GPTBody(vocab_size, d_model, layers, heads, context, dropout)
    raise ValueError(f"body: expected one of {', '.join(BODIES)}, got {kind!r}")


BODIES = ("lstm", "gpt")


class LanguageModel(nn.Module):
    """body + head. forward(ids [B, L], targets [B, L], state) -> (mean NLL, new state, hidden)."""

    def __init__(self, body: nn.Module, head):
        super().__init__()
        self.body, self.head = body, head

    def forward(self, ids, targets, state=None):
        hidden, state = self.body(ids, state)
        return self.head.loss(hidden, targets), state, hidden


def detach_state(state):
    return None if state is None else tuple(s.detach() for s in state)
