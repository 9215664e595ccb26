"""Graphs compiled with torch.compile (opt-in: TENSORWIRE_GRAPH_COMPILE=1). Slow: the first
compile takes ~20 s on this 2-core machine, so it runs under `make test-slow`, not `make test`."""

from __future__ import annotations

import numpy as np
import pytest

import tensorwire as tw

pytest.importorskip("torch")


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch.compile's own imports
@pytest.mark.filterwarnings("ignore::UserWarning")
def test_compiled_graph_matches_eager(monkeypatch):
    monkeypatch.setenv("TENSORWIRE_GRAPH_COMPILE", "1")
    rng = np.random.default_rng(0)
    x = rng.standard_normal((64, 32)).astype(np.float32)
    b = np.zeros(16, np.float32)
    with tw.Server(backend="torch", device="cpu") as server, tw.Client(server.url) as gpu:
        w = gpu.put(rng.standard_normal((16, 32)).astype(np.float32))
        for _ in range(2):  # the second run hits the cached compiled plan
            with gpu.graph() as g:
                y = g.run(g.gelu(g.linear(x, w, b)))
            assert gpu.last_trace["graph_mode"] == "compiled: torch.compile"
        np.testing.assert_allclose(y, gpu.gelu(gpu.linear(x, w, b)), rtol=1e-5, atol=1e-5)
