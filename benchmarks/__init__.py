"""Side-by-side benchmarks: `common` against the tools people would use instead."""
