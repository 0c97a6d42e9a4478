"""Every private transformers API the library uses, in one place.

Read against transformers 5.17 (the GPU image) to 5.24 (:data:`CHECKED_TRANSFORMERS`);
``tests/unit/test_private_guards.py`` checks each name on the installed version.

* ``PretrainedConfig._attn_implementation``: the attention kernel a loaded model runs
  (the public ``attn_implementation`` argument only sets it); read to restore a model's
  kernel after the drift measurement switches it to eager.
"""

from __future__ import annotations

from typing import Any

CHECKED_TRANSFORMERS = ("5.17", "5.24")  # inclusive range read


def attn_implementation(config: Any) -> str | None:
    """The attention implementation a model's config says it runs (``None`` if unset)."""
    return getattr(config, "_attn_implementation", None)
