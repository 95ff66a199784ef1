"""A paged KV cache: fixed-size blocks handed out on demand, shared between sequences by prefix.

Why: a static cache reserves `max_tokens` slots for every request up front, and most requests end long
before that, so most of the reservation is never used (vLLM's paper measured 60-80% of KV memory wasted
that way). Here a sequence owns a *block table*, a list of block ids, and takes a new block only when its
last one is full; a finished sequence returns its blocks to a free list.

Prefix caching: a full block is identified by a hash chained over the whole prefix up to it (the hash of
the previous block and this block's tokens), so two prompts that start alike (a shared system prompt)
map their first blocks to the same physical blocks, which are computed once and reference-counted. A
freed block keeps its hash until it is handed out again, so a prompt seen a moment ago still hits.

`BlockManager` is the bookkeeping (no tensors, ~nano-vllm's `block_manager.py`); `PagedKVCache` holds
the key and value blocks and is a `KVCache` for `Decoder.forward`, one batch of sequences at a time.
"""

from __future__ import annotations

import hashlib
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from common.llm.model import DecoderConfig


class OutOfBlocks(RuntimeError):
    """Every block is in use: a scheduler would wait, or preempt a sequence, before trying again."""


def block_hash(previous: bytes, tokens: Sequence[int]) -> bytes:
    """The identity of a full block: its tokens and, through `previous`, everything before them."""
    h = hashlib.blake2b(previous, digest_size=16)
    h.update(b"".join(int(t).to_bytes(4, "little", signed=False) for t in tokens))
    return h.digest()


@dataclass
class PagedSequence:
    """One sequence's tokens and its block table (the physical block of each `block_size` tokens)."""

    tokens: list[int]
    table: list[int] = field(default_factory=list)
    cached_tokens: int = 0  # how many leading tokens were found in the prefix cache at allocation

    def __len__(self) -> int:
        return len(self.tokens)


class BlockManager:
    """Which physical blocks are free, who holds each (reference counts), and which full blocks are
    known by their prefix hash."""

    def __init__(self, num_blocks: int, block_size: int):
        if num_blocks < 1 or block_size < 1:
            raise ValueError(f"need num_blocks >= 1 and block_size >= 1, got {num_blocks} and {block_size}")
        self.num_blocks, self.block_size = num_blocks, block_size
        self.refs = [0] * num_blocks
        self.hash_of: list[bytes | None] = [None] * num_blocks
        self.by_hash: dict[bytes, int] = {}
        self.free: deque[int] = deque(range(num_blocks))
        self.hits = self.lookups = 0
        self.used = self.peak_used = 0  # blocks held by at least one sequence, now and at most

    def _hold(self, block: int) -> None:
        if self.refs[block] == 0:
            self.used += 1
            self.peak_used = max(self.peak_used, self.used)
        self.refs[block] += 1

    def _take(self) -> int:
        while self.free:
            block = self.free.popleft()
            if self.refs[block] == 0:  # a freed block that a prefix hit revived is skipped
                if (old := self.hash_of[block]) is not None and self.by_hash.get(old) == block:
                    del self.by_hash[old]  # its old contents are about to be overwritten
                self.hash_of[block] = None
                self._hold(block)
                return block
        raise OutOfBlocks(f"all {self.num_blocks} blocks of {self.block_size} tokens are in use")

    def _register(self, block: int, h: bytes) -> None:
        self.hash_of[block] = h
        self.by_hash.setdefault(h, block)

    def allocate(self, tokens: Sequence[int]) -> PagedSequence:
        """A block table for a new sequence: full blocks found by prefix hash are shared, the rest taken.

        Only a run of hits from the start counts: a block's keys depend on everything before it.
        """
        seq = PagedSequence(list(map(int, tokens)))
        bs, previous, hitting = self.block_size, b"", True
        try:
            for start in range(0, len(seq), bs):
                chunk = seq.tokens[start : start + bs]
                if len(chunk) == bs:
                    h = block_hash(previous, chunk)
                    previous = h
                    self.lookups += 1
                    block = self.by_hash.get(h) if hitting else None
                    if block is not None:
                        self.hits += 1
                        self._hold(block)  # a freed block that still has its hash is revived
                        seq.table.append(block)
                        seq.cached_tokens += bs
                        continue
                    hitting = False
                    block = self._take()
                    self._register(block, h)
                else:
                    block = self._take()
                seq.table.append(block)
        except OutOfBlocks:
            self.release(seq)
            raise
        return seq

    def append(self, seq: PagedSequence, token: int) -> None:
        """One more token for `seq`: a new block when the last is full; a block that fills is registered."""
        if len(seq) % self.block_size == 0:
            seq.table.append(self._take())
        seq.tokens.append(int(token))
        if len(seq) % self.block_size == 0:
            n = len(seq) // self.block_size
            previous = b"" if n == 1 else (self.hash_of[seq.table[n - 2]] or b"")
            self._register(seq.table[n - 1], block_hash(previous, seq.tokens[-self.block_size :]))

    def release(self, seq: PagedSequence) -> None:
        """A finished sequence gives its blocks back; shared blocks stay while others hold them."""
        for block in seq.table:
            self.refs[block] -= 1
            if self.refs[block] == 0:
                self.used -= 1
                self.free.append(block)  # keeps its hash: a prompt seen again soon still hits
        seq.table.clear()

    @property
    def hit_rate(self) -> float:
        return self.hits / self.lookups if self.lookups else 0.0


class PagedKVCache:
    """Key and value blocks for every layer, slot-major: slot = block * block_size + offset."""

    def __init__(
        self, config: DecoderConfig, num_blocks: int, block_size: int = 16, *, dtype: torch.dtype = torch.float32
    ):
        self.manager = BlockManager(num_blocks, block_size)
        shape = (config.num_hidden_layers, num_blocks * block_size, config.num_key_value_heads, config.head_dim)
        self.k = torch.zeros(shape, dtype=dtype)
        self.v = torch.zeros(shape, dtype=dtype)
        self.block_size = block_size
        self._rows: list[PagedSequence] = []
        self._known: list[int] = []
        self.length = 0

    @property
    def bytes_per_token(self) -> int:
        return 2 * self.k[:, 0].nbytes

    @property
    def nbytes(self) -> int:
        return self.k.nbytes + self.v.nbytes

    def _slots(self, seq: PagedSequence, start: int, end: int) -> torch.Tensor:
        positions = torch.arange(start, end)
        table = torch.tensor(seq.table, dtype=torch.long)
        return table[positions // self.block_size] * self.block_size + positions % self.block_size

    def batch(self, rows: Sequence[PagedSequence], known: Sequence[int]) -> PagedKVCache:
        """Set up the next forward over `rows`, whose first `known[i]` tokens are already in the cache;
        returns self, to pass as `cache=` (the new tokens' positions are `known[i]` onwards)."""
        self._rows, self._known = list(rows), list(known)
        return self

    def append(self, rows: Sequence[PagedSequence], tokens: Sequence[int]) -> PagedKVCache:
        """One decode step's setup: token i joins row i's block table (a block is taken when the last is
        full), and the next forward computes those tokens; returns self, to pass as `cache=`."""
        for seq, token in zip(rows, tokens, strict=True):
            self.manager.append(seq, token)
        return self.batch(rows, [len(seq) - 1 for seq in rows])

    def positions(self, new_tokens: int) -> torch.Tensor:
        return torch.stack([torch.arange(k, k + new_tokens) for k in self._known])

    def attention_mask(self, new_tokens: int, valid: torch.Tensor | None) -> torch.Tensor:
        queries = self.positions(new_tokens)[:, :, None]
        keys = torch.arange(int(queries.max()) + 1)[None, None, :]
        return (keys <= queries)[:, None]  # (batch, 1, new, width): causal; shorter rows' tail masked

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        new = k.shape[2]
        width = max(kn + new for kn in self._known)
        gathered_k, gathered_v = [], []
        for i, (seq, kn) in enumerate(zip(self._rows, self._known, strict=True)):
            slots = self._slots(seq, kn, kn + new)
            self.k[layer, slots] = k[i].transpose(0, 1)  # (new, kv_heads, head_dim)
            self.v[layer, slots] = v[i].transpose(0, 1)
            every = self._slots(seq, 0, kn + new)
            pad = width - len(every)
            every = torch.cat([every, every[-1:].expand(pad)]) if pad else every  # masked anyway
            gathered_k.append(self.k[layer, every].transpose(0, 1))
            gathered_v.append(self.v[layer, every].transpose(0, 1))
        return torch.stack(gathered_k), torch.stack(gathered_v)

    def advance(self, new_tokens: int) -> None:
        self._known = [k + new_tokens for k in self._known]


@dataclass(frozen=True)
class Reservation:
    """KV memory a workload needs, three ways, in tokens' worth of slots."""

    used: int  # the tokens the sequences actually hold
    contiguous: int  # one max-length reservation per sequence (a static cache)
    paged: int  # whole blocks per sequence

    @property
    def contiguous_waste(self) -> float:
        return 1 - self.used / self.contiguous

    @property
    def paged_waste(self) -> float:
        return 1 - self.used / self.paged


def reservation(lengths: Sequence[int], max_tokens: int, block_size: int) -> Reservation:
    """What a static (per-request, max-length) cache and a paged one reserve for sequences of `lengths`."""
    if any(n > max_tokens for n in lengths):
        raise ValueError(f"a sequence of {max(lengths)} tokens does not fit max_tokens={max_tokens}")
    return Reservation(
        used=sum(lengths),
        contiguous=len(lengths) * max_tokens,
        paged=sum(-(-n // block_size) * block_size for n in lengths),
    )
