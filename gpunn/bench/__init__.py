"""``gpunn bench``: the pytest-benchmark suite it runs (``suite/``, shipped so users can benchmark) and
the report it writes (``report``)."""
