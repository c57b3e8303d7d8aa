"""Fakes of ``tensorrt`` (10.x or 11.x API) and of the cuda-python adapter, for CPU-only tests."""
