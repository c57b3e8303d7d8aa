"""Fakes of ``tensorrt`` (10.x or 11.x API) and of cuda-python's ``cuda.bindings.runtime``, for CPU-only tests."""
