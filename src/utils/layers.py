"""Attention blocks shared by the sequential models (ReChorus' layers, on PyTorch's fused kernel)."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class MultiHeadAttention(nn.Module):
    """Multi-head attention without an output projection, as in ReChorus (``kq_same`` shares Q/K maps)."""

    def __init__(self, d_model: int, n_heads: int, kq_same: bool = False, bias: bool = True):
        super().__init__()
        self.d_model, self.h = d_model, n_heads
        self.d_k = d_model // n_heads
        self.kq_same = kq_same
        if not kq_same:
            self.q_linear = nn.Linear(d_model, d_model, bias=bias)
        self.k_linear = nn.Linear(d_model, d_model, bias=bias)
        self.v_linear = nn.Linear(d_model, d_model, bias=bias)

    def head_split(self, x: torch.Tensor) -> torch.Tensor:  # ... × L × d → ... × h × L × d_k
        return x.view(*x.shape[:-1], self.h, self.d_k).transpose(-2, -3)

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                mask: torch.Tensor | None = None) -> torch.Tensor:
        """``mask`` (broadcastable to ... × h × Lq × Lk) is true/1 where attention is allowed."""
        origin_shape = q.shape
        q = self.head_split((self.k_linear if self.kq_same else self.q_linear)(q))
        k = self.head_split(self.k_linear(k))
        v = self.head_split(self.v_linear(v))
        attn_mask = None if mask is None else mask.bool()
        if attn_mask is None or attn_mask.dim() <= 2:  # 4-D inputs reach the fused CPU kernel, 5-D do not
            q, k, v = (x.reshape(-1, *x.shape[-3:]) for x in (q, k, v))
        output = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
        heads = output.reshape(*origin_shape[:-2], self.h, origin_shape[-2], self.d_k)
        return heads.transpose(-2, -3).reshape(origin_shape)


class TransformerLayer(nn.Module):
    """Post-norm transformer block (attention → add & norm → FFN → add & norm); a subclass with another
    attention sets ``attention_cls`` and calls ``add_and_feed_forward`` on that attention's output."""

    attention_cls: type[MultiHeadAttention] = MultiHeadAttention

    def __init__(self, d_model: int, d_ff: int, n_heads: int, dropout: float = 0.0, kq_same: bool = False):
        super().__init__()
        self.masked_attn_head = self.attention_cls(d_model, n_heads, kq_same=kq_same)
        self.layer_norm1 = nn.LayerNorm(d_model)
        self.dropout1 = nn.Dropout(dropout)
        self.linear1 = nn.Linear(d_model, d_ff)
        self.linear2 = nn.Linear(d_ff, d_model)
        self.layer_norm2 = nn.LayerNorm(d_model)
        self.dropout2 = nn.Dropout(dropout)

    def forward(self, seq: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.add_and_feed_forward(seq, self.masked_attn_head(seq, seq, seq, mask))

    def add_and_feed_forward(self, seq: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        context = self.layer_norm1(self.dropout1(context) + seq)
        output = self.linear2(self.linear1(context).relu())
        return self.layer_norm2(self.dropout2(output) + context)
