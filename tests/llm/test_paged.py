"""The paged cache: the same tokens as the static cache, blocks shared by prefix, and what each reserves."""

import pytest
import torch

from common.llm.generate import generate
from common.llm.model import Decoder, DecoderConfig
from common.llm.paged import BlockManager, OutOfBlocks, PagedKVCache, block_hash, reservation

CONFIG = DecoderConfig(
    vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
    num_key_value_heads=2, head_dim=8, max_position_embeddings=128,
)  # fmt: skip
BLOCK = 8


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return Decoder(CONFIG).eval()


def _prefill(model, cache, seq):
    """Compute the tokens of `seq` that the prefix cache did not have; the last position's logits."""
    new = torch.tensor([seq.tokens[seq.cached_tokens :]])
    view = cache.batch([seq], [seq.cached_tokens])
    return model(new, positions=view.positions(new.shape[1]), cache=view)[:, -1]


@torch.inference_mode()
def test_paged_decoding_generates_what_the_static_cache_generates(model):
    prompts = [[1, 2, 3, 4, 5], list(range(3, 22)), [7] * 33]
    cache = PagedKVCache(CONFIG, num_blocks=40, block_size=BLOCK)
    seqs = [cache.manager.allocate(p) for p in prompts]
    logits = torch.cat([_prefill(model, cache, s) for s in seqs])
    out = [[] for _ in prompts]
    for _ in range(12):  # decode all three together, one token each per step
        tokens = logits.argmax(-1)
        for seq, o, t in zip(seqs, out, tokens.tolist(), strict=True):
            o.append(t)
            cache.manager.append(seq, t)
        view = cache.batch(seqs, [len(s) - 1 for s in seqs])
        logits = model(tokens[:, None], positions=view.positions(1), cache=view)[:, -1]
    for prompt, got in zip(prompts, out, strict=True):
        assert got == generate(model, [prompt], max_new_tokens=12)[0].tokens
    assert [len(s.table) for s in seqs] == [-(-len(s) // BLOCK) for s in seqs]


@torch.inference_mode()
def test_a_shared_prefix_is_computed_once_and_reference_counted(model):
    system = list(range(10, 42))  # 32 tokens: four full blocks
    cache = PagedKVCache(CONFIG, num_blocks=20, block_size=BLOCK)
    first = cache.manager.allocate([*system, 1, 2, 3])
    _prefill(model, cache, first)
    second = cache.manager.allocate([*system, 9, 8])
    assert second.cached_tokens == 32 and second.table[:4] == first.table[:4]
    assert [cache.manager.refs[b] for b in second.table[:4]] == [2] * 4
    got = _prefill(model, cache, second)  # only the 2 new tokens are computed
    want = model(torch.tensor([[*system, 9, 8]]))[:, -1]
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    cache.manager.release(first)
    assert [cache.manager.refs[b] for b in second.table[:4]] == [1] * 4
    shared = list(second.table[:4])
    cache.manager.release(second)
    again = cache.manager.allocate([*system, 5])  # freed blocks keep their hashes until reused
    assert again.table[:4] == shared and again.cached_tokens == 32
    assert cache.manager.hit_rate == pytest.approx(8 / 12)


def test_hashes_chain_over_the_whole_prefix():
    same_block = [1, 2, 3, 4]
    assert block_hash(b"", same_block) != block_hash(block_hash(b"", [9, 9, 9, 9]), same_block)
    manager = BlockManager(num_blocks=8, block_size=4)
    a = manager.allocate([9, 9, 9, 9, *same_block])
    b = manager.allocate([8, 8, 8, 8, *same_block])
    assert b.cached_tokens == 0 and not set(a.table) & set(b.table), "a block is shared only with its prefix"


def test_running_out_of_blocks_is_an_error_that_leaks_nothing():
    manager = BlockManager(num_blocks=3, block_size=4)
    manager.allocate(list(range(8)))
    with pytest.raises(OutOfBlocks, match="all 3 blocks of 4 tokens are in use"):
        manager.allocate(list(range(100, 108)))
    assert manager.used == 2 and len([b for b in manager.free if manager.refs[b] == 0]) == 1
    with pytest.raises(ValueError, match="num_blocks >= 1"):
        BlockManager(0, 4)


def test_paging_wastes_little_where_contiguous_reservation_wastes_most():
    lengths = torch.randint(20, 700, (200,), generator=torch.Generator().manual_seed(0)).tolist()
    r = reservation(lengths, max_tokens=2048, block_size=16)
    assert r.contiguous_waste > 0.6 and r.paged_waste < 0.05, r
    assert r.used == sum(lengths) <= r.paged <= r.contiguous
    with pytest.raises(ValueError, match="does not fit max_tokens=64"):
        reservation([65], max_tokens=64, block_size=16)


def test_generate_paged_equals_generate_and_reuses_a_shared_prefix(model):
    from common.llm.generate import generate_paged

    system = list(range(10, 42))  # four full blocks
    prompts = [[*system, 1, 2, 3], [*system, 9], [5, 6, 7]]
    cache = PagedKVCache(CONFIG, num_blocks=40, block_size=BLOCK)
    got = generate_paged(model, cache, prompts, max_new_tokens=10)
    for prompt, g in zip(prompts, got, strict=True):
        assert g.tokens == generate(model, [prompt], max_new_tokens=10)[0].tokens
        assert g.finish_reason == "max_tokens"
    assert cache.manager.used == 0, "every block is released"
    assert cache.manager.peak_used == 6 + 2 + 2  # 44 tokens; 42 with four blocks shared; 12
    assert cache.manager.hits == 4  # the second prompt found the first one's four system blocks
    again = generate_paged(model, cache, [system], max_new_tokens=3)  # wholly cached: the last token is redone
    assert again[0].tokens == generate(model, [system], max_new_tokens=3)[0].tokens
    stop = got[0].tokens[2]
    stopped = generate_paged(model, cache, prompts[:1], max_new_tokens=10, stop_token_ids=[stop])[0]
    assert stopped.tokens == got[0].tokens[: got[0].tokens.index(stop) + 1] and stopped.finish_reason == "stop_token"
    with pytest.raises(OutOfBlocks):
        generate_paged(model, PagedKVCache(CONFIG, num_blocks=3, block_size=BLOCK), prompts, max_new_tokens=4)
    with pytest.raises(ValueError, match="exceeds the model's context of 128"):
        generate_paged(model, cache, [[1] * 120], max_new_tokens=10)
