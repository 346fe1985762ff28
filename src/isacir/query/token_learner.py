"""The adaptive token learner: a feature map in, a short "sentence" of pseudo words out.

N spatial attention maps (softmax over positions, as in TokenLearner) pool the backbone's feature
map into N visual slots; a small transformer lets the slots exchange context and a linear head maps
them into the foundation's word-embedding space. A final LayerNorm whose gain starts at the word
embeddings' RMS puts fresh outputs on the scale the text encoder expects.
"""

from __future__ import annotations

import torch
from timm.models.vision_transformer import Block
from torch import nn


class AdaptiveTokenLearner(nn.Module):
    def __init__(
        self,
        in_channels: int,
        word_dim: int,
        num_tokens: int = 8,
        hidden_dim: int = 256,
        depth: int = 2,
        num_heads: int = 4,
        mlp_ratio: float = 2.0,
        attn_hidden: int | None = None,
        output_rms: float = 1.0,
    ):
        super().__init__()
        if num_tokens < 1:
            raise ValueError(f"num_tokens must be >= 1, got {num_tokens}")
        if hidden_dim % num_heads:
            raise ValueError(f"hidden_dim {hidden_dim} must be divisible by num_heads {num_heads}")
        attn_hidden = attn_hidden or max(in_channels // 2, num_tokens)
        self.num_tokens = num_tokens
        self.word_dim = word_dim
        self.attention = nn.Sequential(
            nn.Conv2d(in_channels, attn_hidden, kernel_size=1),
            nn.GELU(),
            nn.Conv2d(attn_hidden, num_tokens, kernel_size=1),
        )
        self.in_norm = nn.LayerNorm(in_channels)
        self.in_proj = nn.Linear(in_channels, hidden_dim)
        self.slot_embed = nn.Parameter(torch.zeros(1, num_tokens, hidden_dim))
        nn.init.trunc_normal_(self.slot_embed, std=0.02)
        self.blocks = nn.Sequential(
            *[Block(hidden_dim, num_heads=num_heads, mlp_ratio=mlp_ratio, qkv_bias=True) for _ in range(depth)]
        )
        self.head_norm = nn.LayerNorm(hidden_dim)
        self.head = nn.Linear(hidden_dim, word_dim)
        self.out_norm = nn.LayerNorm(word_dim)
        nn.init.constant_(self.out_norm.weight, output_rms)

    def attention_maps(self, features: torch.Tensor) -> torch.Tensor:
        """``[B, N, H, W]`` maps that each sum to one over positions."""
        logits = self.attention(features)
        b, n, h, w = logits.shape
        return logits.flatten(2).softmax(dim=-1).view(b, n, h, w)

    def forward(
        self, features: torch.Tensor, return_maps: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        maps = self.attention_maps(features)
        pooled = torch.einsum("bnp,bcp->bnc", maps.flatten(2), features.flatten(2))
        x = self.in_proj(self.in_norm(pooled)) + self.slot_embed
        x = self.blocks(x)
        tokens = self.out_norm(self.head(self.head_norm(x)))
        return (tokens, maps) if return_maps else tokens
