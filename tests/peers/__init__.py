"""Adapters to the peer libraries used as oracles by the tests and benchmarks (PyHessian, PennyLane)."""
