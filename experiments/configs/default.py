"""The default config, every key with its meaning: the sweep's default config file.

The config is ``bigbatch_jax.configs.default`` (installed with the package,
also ``bigbatch_jax.configs.get("default")``), where each key is declared
with a comment.
"""

from bigbatch_jax.configs.default import get_config

__all__ = ["get_config"]
