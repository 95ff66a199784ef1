"""`common.serving`: an async inference server with dynamic batching, back-pressure and metrics."""
