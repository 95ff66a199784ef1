"""The data path of module 06: a table of events made, turned into features, handed to another process and fed
to a model, with every copy on the way either avoided or named.

- `synth`: deterministic synthetic identity-verification events, any size, block by block (Arrow, Parquet, IPC);
- `vectorised`: one feature transformation four ways (Python loop, NumPy, Polars expressions, Numba), held equal;
- `pipeline`: the feature pipeline as a lazy Polars plan, the same features in pandas, and what the optimiser
  and the Parquet reader did;
- `memory`: where an object's bytes live, and `assert_zero_copy`, which checks it by address;
- `transport`: a table to another process (memory-mapped Arrow IPC, shared memory, or pickled through a queue)
  and Arrow columns to torch tensors through DLPack;
- `feed`: a features file into float32 batches for a model, the Arrow path against pandas and Python lists;
- `errors`: `CorruptFile`, raised by more than one of them.

This package re-exports nothing: import the module you need (`from common.data import pipeline, synth`), so
that reading a table does not also load torch (`feed`) or Numba (`vectorised`).

Depends on nothing above it in `common` (DESIGN.md): NumPy, PyArrow and Polars; pandas as the peer
it is measured against, Numba in `vectorised`, torch in `feed` and `transport`.
"""
