"""A small decoder-only transformer for the grokking task, built from torch's own layers.

Token and learned position embeddings → `layers` pre-LayerNorm blocks (causal self-attention, GELU MLP; torch's
`TransformerEncoderLayer` with `norm_first=True` and a causal mask) → a final LayerNorm → the unembedding, applied to
the last position only. The penultimate feature is the last position's residual stream after the final LayerNorm
(d_model values); the classifier is `unembed`, a Linear(d_model → p) whose weight and bias are W and b.
"""

from __future__ import annotations

import torch
from torch import nn

from ncflow.grokking.task import SEQUENCE_LENGTH


class GrokTransformer(nn.Module):
    def __init__(self, vocabulary: int, classes: int, layers: int, d_model: int, heads: int, mlp_width: int) -> None:
        super().__init__()
        self.token_embedding = nn.Embedding(vocabulary, d_model)
        self.position_embedding = nn.Embedding(SEQUENCE_LENGTH, d_model)
        block = nn.TransformerEncoderLayer(d_model, heads, mlp_width, dropout=0.0, activation="gelu",
                                           batch_first=True, norm_first=True)
        self.blocks = nn.TransformerEncoder(block, layers, enable_nested_tensor=False)
        self.final_norm = nn.LayerNorm(d_model)
        self.unembed = nn.Linear(d_model, classes)
        self.register_buffer("causal_mask", nn.Transformer.generate_square_subsequent_mask(SEQUENCE_LENGTH),
                             persistent=False)

    def features(self, tokens: torch.Tensor) -> torch.Tensor:
        """The penultimate features: the last position after the final LayerNorm (B × d_model)."""
        positions = torch.arange(tokens.shape[1], device=tokens.device)
        hidden = self.token_embedding(tokens) + self.position_embedding(positions)
        hidden = self.blocks(hidden, mask=self.causal_mask[:tokens.shape[1], :tokens.shape[1]], is_causal=True)
        return self.final_norm(hidden[:, -1])

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """Logits over the p answers (B × p)."""
        return self.unembed(self.features(tokens))
