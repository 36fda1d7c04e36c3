"""Prefix caching with the guard on: what a cache hit changes, and why steered KV is never shared.

What a cache hit changes for the guard (vLLM V1, ``KVCacheManager.get_computed_blocks``):

* the hit is capped at ``num_tokens - 1``, so the **last prompt token is always computed**: the
  guard's ``prompt`` score (the z-score of the last prompt token's row) and every ``prompt`` rule see
  exactly what they see without a hit. Repeated prompts get the same prompt scores;
* the cached prefix's tokens are not computed, so they are **not scored**: token counts
  (``prompt_tokens`` in the verdict, ``axisguard_tokens_scored_total{phase="prompt"}``) count the computed
  prompt tokens only, and ``token_index`` of a ``prompt`` rule's firing counts from the first
  computed token. Generated tokens are always computed and scored;
* activation capture (``--engine vllm`` extraction) pools ``last`` over the last prompt token (always
  computed); ``mean`` pooling would average only the uncached tail, so the extractor turns prefix
  caching off for itself.

Steered KV (the policy's ``steer`` action adds a delta to the residual stream of the firing request):
the guard only ever steers a request's *last prompt token* (a ``prompt`` rule, from the score layer
up) and its *generated tokens*; earlier prompt tokens are never steered. vLLM caches a block as soon
as it is full (at scheduling time, before the step that computes it, so before the guard knows
whether a rule fires in that step). The policy below therefore lets a guarded engine cache only
the blocks that lie entirely before a request's last prompt token: those hold KV computed without
any steering, for every request, whatever its overrides. Blocks holding the last prompt token or
generated tokens never enter the prefix cache, so no request (steered or not, same turn or the next
turn of a chat whose prompt contains a steered answer) can ever read steered KV it did not compute.
No ``cache_salt`` is needed, and shared system prompts and repeated prompts keep their hits.

Cost: a multi-turn chat recomputes the previous turns' answers (their tokens were generated, so
never cached) instead of reading them from the cache; the previous turns' prompts still hit.
"""

from __future__ import annotations

import functools
from typing import Any

_FLAG = "_axisguard_cache_only_unsteerable"


def cacheable_tokens(request: Any, num_tokens: int) -> int:
    """How many of the request's first ``num_tokens`` may enter the prefix cache: never the last
    prompt token or anything after it (the only positions the guard can steer)."""
    return max(0, min(num_tokens, int(request.num_prompt_tokens) - 1))


def install_prefix_cache_policy() -> None:
    """Patch vLLM's KV cache manager (idempotent). Engines built while the guard is configured (mode
    ``guard``) cache only unsteerable blocks; any other engine behaves exactly as without axisguard."""
    from vllm.v1.core.kv_cache_coordinator import KVCacheCoordinator
    from vllm.v1.core.kv_cache_manager import KVCacheManager

    if getattr(KVCacheCoordinator.cache_blocks, "_axisguard", False):
        return
    original_cache_blocks = KVCacheCoordinator.cache_blocks
    original_init = KVCacheManager.__init__

    @functools.wraps(original_cache_blocks)
    def cache_blocks(self: Any, request: Any, num_computed_tokens: int) -> None:
        if getattr(self, _FLAG, False):
            num_computed_tokens = cacheable_tokens(request, num_computed_tokens)
        original_cache_blocks(self, request, num_computed_tokens)

    @functools.wraps(original_init)
    def init(self: Any, *args: Any, **kwargs: Any) -> None:
        original_init(self, *args, **kwargs)
        from integrations.vllm.config import GuardConfig

        config = GuardConfig.from_env()
        setattr(self.coordinator, _FLAG, config is not None and config.mode == "guard")

    cache_blocks._axisguard = True  # type: ignore[attr-defined]
    KVCacheCoordinator.cache_blocks = cache_blocks  # type: ignore[method-assign]
    KVCacheManager.__init__ = init  # type: ignore[method-assign]


def is_policy_active(kv_cache_manager: Any) -> bool:
    """Whether this engine's KV cache manager caches only unsteerable blocks (tests, status)."""
    return bool(getattr(kv_cache_manager.coordinator, _FLAG, False))
