"""Test session set-up.

Four simulated CPU devices, so data-parallel tests (shard_map, pmap, ghost
statistics gathered across devices) run on any machine. The flag must be set
before JAX is imported, hence here at the top of the conftest.
"""

import os

os.environ["XLA_FLAGS"] = (
  os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4"
).strip()
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import jax

assert len(jax.devices()) == 4, (
  "tests expect 4 simulated CPU devices; JAX was imported before tests/conftest.py "
  f"set XLA_FLAGS (devices: {jax.devices()})"
)
