"""A small language-model body whose output layer is any vqbench head."""

from __future__ import annotations

import torch
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


class LanguageModel(nn.Module):
    """body + head. forward(ids [B, L], targets [B, L], state) -> (mean NLL, new state, hidden)."""

    def __init__(self, body: LSTMBody, head):
        super().__init__()
        self.body, self.head = body, head

    def forward(self, ids, targets, state=None):
        hidden, state = self.body(ids, state)
        return self.head.loss(hidden, targets), state, hidden


def detach_state(state):
    return None if state is None else tuple(s.detach() for s in state)
