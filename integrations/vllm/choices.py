"""Which choice of an OpenAI response an internal vLLM request is (``n > 1``, several prompts).

vLLM turns one API request into several engine requests: a completion with several prompts gets
``<id>-<prompt>`` sub-requests, ``n > 1`` makes ``<sample>_<parent>`` children of each, and every
engine request carries a random ``-xxxxxxxx`` suffix. The response's ``choices[i]`` is sample ``j`` of
prompt ``p`` with ``i = p * n + j``, so sorting a response's engine requests by ``(p, j)`` gives the
choices in order. These functions parse that naming (vLLM 0.32 ``parallel_sampling`` and
``completion/serving``); the verdict store and the in-band verdict use them.
"""

from __future__ import annotations

import re
from typing import Any

_SUFFIX_LEN = 8  # vLLM appends f"-{random_uuid():.8}" unless VLLM_DISABLE_REQUEST_ID_RANDOMIZATION
_CHILD = re.compile(r"^(\d+)_(.+)$")


def external_id(internal_id: str) -> str:
    """The client-visible id of an internal vLLM request id (best effort: strips the random suffix)."""
    head, dash, tail = internal_id.rpartition("-")
    if dash and len(tail) == _SUFFIX_LEN and all(c in "0123456789abcdef" for c in tail):
        return head
    return internal_id


def split_sample(internal_id: str) -> tuple[int, str]:
    """``(sample index, parent id)`` of an ``n > 1`` child (``"1_chatcmpl-x-1a2b3c4d"``); ``(0, id)`` otherwise."""
    match = _CHILD.match(internal_id)
    if match is None:
        return 0, internal_id
    return int(match.group(1)), match.group(2)


def choice_key(query: str, internal_id: str) -> tuple[int, int] | None:
    """``(prompt index, sample index)`` when ``internal_id`` belongs to the client's id ``query``, else None."""
    if query == internal_id:
        return 0, 0
    sample, parent = split_sample(internal_id)
    if query == parent:
        return 0, sample
    ext = external_id(parent)
    if ext == query:
        return 0, sample
    if ext.startswith(query + "-"):
        tail = ext[len(query) + 1:]
        return (int(tail), sample) if tail.isdigit() else None
    return None


def in_choice_order(query: str, found: list[tuple[str, dict[str, Any]]]) -> list[dict[str, Any]]:
    """The verdicts of one response, ordered like its ``choices`` and numbered (``index``) like them."""
    keyed = sorted((key, internal_id, verdict) for internal_id, verdict in found
                   if (key := choice_key(query, internal_id)) is not None)
    return [{**verdict, "index": i} for i, (_, _, verdict) in enumerate(keyed)]
