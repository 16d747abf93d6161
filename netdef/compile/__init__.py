"""Graph -> runnable layers: instantiation and shape inference, then the
execution plan (memory reuse, fusion) built on top of it."""
