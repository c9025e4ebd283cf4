"""How hard property tests try: HYPOTHESIS_MAX_EXAMPLES (the deep CI run sets 10000)."""

from __future__ import annotations

import os


def max_examples(default: int = 300) -> int:
    """Examples per property test: HYPOTHESIS_MAX_EXAMPLES if set (and not empty), else default."""
    configured = os.environ.get("HYPOTHESIS_MAX_EXAMPLES", "").strip()
    if not configured:
        return default
    examples = int(configured)
    if examples < 1:
        raise ValueError(f"HYPOTHESIS_MAX_EXAMPLES must be at least 1, not {examples}")
    return examples
