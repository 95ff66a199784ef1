"""KV caches: what a decoder keeps of the tokens it has seen so that each new token costs one step.

Without a cache, generating token n runs the model over all n tokens again, so a sequence costs O(n^2)
work. With one, each layer's keys and values are kept, and a step computes only the new token's, then
attends over everything kept. `StaticCache` preallocates every slot once (gpt-fast's design): memory for
`max_tokens` per row whether or not a row uses them, written in place, the same tensors every step.
"""

from __future__ import annotations

import torch

from common.llm.model import DecoderConfig


class StaticCache:
    """Keys and values for `batch` rows of up to `max_tokens` slots each, preallocated and written in place.

    Slots are shared by all rows (slot i is step i for everyone); a left-padded batch marks its padding
    slots invalid, so no real token attends to them, and each row has its own positions for rotary.
    """

    def __init__(
        self,
        config: DecoderConfig,
        batch: int,
        max_tokens: int,
        *,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
    ) -> None:
        if batch < 1 or max_tokens < 1:
            raise ValueError(f"a cache needs batch >= 1 and max_tokens >= 1, got {batch} and {max_tokens}")
        shape = (config.num_hidden_layers, batch, config.num_key_value_heads, max_tokens, config.head_dim)
        self.k = torch.zeros(shape, dtype=dtype, device=device)
        self.v = torch.zeros(shape, dtype=dtype, device=device)
        self.valid = torch.zeros(batch, max_tokens, dtype=torch.bool, device=device)
        self.batch, self.max_tokens, self.length = batch, max_tokens, 0
        # Static-shape mode, for a compiled decode step: the slot being written is a tensor, and attention
        # spans all max_tokens slots (the unwritten ones masked), so every step has the same shapes and
        # no Python number changes between steps: the compiled graph is reused.
        self.slot: torch.Tensor | None = None
        self._all_slots = torch.arange(max_tokens, device=device)

    @property
    def nbytes(self) -> int:
        """Memory reserved, used or not: 2 (K and V) x layers x batch x kv_heads x max_tokens x head_dim x size."""
        return self.k.nbytes + self.v.nbytes

    def static(self) -> None:
        """Switch to static shapes from the next slot on (after an eager prefill, say)."""
        self.slot = torch.tensor([self.length], device=self.k.device)

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.slot is not None:
            self.k[layer].index_copy_(2, self.slot, k)
            self.v[layer].index_copy_(2, self.slot, v)
            return self.k[layer], self.v[layer]
        end = self.length + k.shape[2]
        self.k[layer, :, :, self.length : end] = k
        self.v[layer, :, :, self.length : end] = v
        return self.k[layer, :, :, :end], self.v[layer, :, :, :end]

    def attention_mask(self, new_tokens: int, valid: torch.Tensor | None) -> torch.Tensor:
        if self.slot is not None:  # one new token at self.slot; every slot up to it that holds a real token
            self.valid.index_fill_(1, self.slot, True)
            keys = self._all_slots[None, None, None, :]
            return ((keys <= self.slot) & self.valid[:, None, None, :]) | (keys == self.slot)
        end = self.length + new_tokens
        if end > self.max_tokens:
            raise ValueError(f"the cache holds {self.max_tokens} tokens a row; {end} were asked for")
        self.valid[:, self.length : end] = True if valid is None else valid
        slots = torch.arange(end, device=self.k.device)
        causal = slots[None, :] <= slots[self.length :, None]  # (new, end)
        mask = causal[None, None] & self.valid[:, None, None, :end]
        # a padding token may attend to itself, so its row is never all-masked (softmax over nothing is NaN,
        # and a NaN value cached in a padding slot would poison real rows through 0 * NaN)
        return mask | (slots[None, :] == slots[self.length :, None])[None, None]

    def advance(self, new_tokens: int) -> None:
        if self.slot is not None:
            self.slot += new_tokens  # in place: the compiled step sees the same tensor, a new value
        self.length += new_tokens

    def reset(self) -> None:
        """Empty, for the next batch, without freeing (or re-faulting) the memory."""
        self.length, self.slot = 0, None
        self.valid.zero_()
