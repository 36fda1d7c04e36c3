"""Policy generations in one worker: a step shared by requests of two policies, each guarded by its own."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from guard.errors import AxisguardError
from guard.policy import Policy
from guard.runtime import Guard
from integrations.vllm.live_policy import LivePolicyConsumer
from integrations.vllm.row_mapping import StepRows
from tests.vllm_support import random_pack

LAYER = 1
PACK = random_pack("tiny", layer=LAYER)
FLAG = Policy.model_validate({"name": "flagging", "rules": [
    {"name": "flag_all", "axis": "toxicity", "threshold": -1e6, "action": "flag"}]})
STEER = Policy.model_validate({"name": "steering", "rules": [
    {"name": "steer_all", "axis": "refusal", "threshold": -1e6, "action": "steer",
     "steer": {"method": "add", "strength": 1.0}}]})


def step(ids: list[str], counts: list[int], computed: list[int], prompt: list[int]) -> StepRows:
    return StepRows(ids, np.concatenate([[0], np.cumsum(counts)]).astype(np.int64),
                    np.asarray(computed, dtype=np.int64), np.asarray(prompt, dtype=np.int64))


def test_running_requests_keep_their_policy_within_a_shared_step() -> None:
    consumer = LivePolicyConsumer(Guard(PACK, FLAG), lambda p: Guard(PACK, p), hooked_layers=[LAYER])
    consumer.start_request("old")
    assert consumer.set_policy(STEER)["generations"] == 2
    consumer.start_request("new")
    hidden = torch.randn(5, PACK.model.hidden_size)
    delta = consumer.on_step(LAYER, hidden, step(["old", "new"], [3, 2], [0, 0], [3, 2]))
    assert delta is not None and not delta[:3].any()  # the old policy does not steer
    assert delta[4].abs().sum() > 0  # the new one steers from its request's last prompt row
    old, new = consumer.verdict("old"), consumer.verdict("new")
    assert old is not None and new is not None
    assert (old["policy"], old["actions"], new["policy"], new["steered"]) == ("flagging", ["flag"], "steering", True)
    decode = consumer.on_step(LAYER, hidden[:2], step(["new", "old"], [1, 1], [2, 3], [2, 3]))
    assert decode is not None and decode[0].abs().sum() > 0 and not decode[1].any()
    consumer.finish_request("old")
    assert len(consumer.generations) == 1 and consumer.active_requests() == 1  # the old generation is gone


def test_a_policy_needing_unhooked_layers_is_refused() -> None:
    consumer = LivePolicyConsumer(Guard(PACK, FLAG), lambda p: Guard(PACK, p), hooked_layers=[LAYER])
    elsewhere = STEER.model_copy(deep=True)
    assert elsewhere.rules[0].steer is not None
    elsewhere.rules[0].steer.layers = [LAYER + 1]
    with pytest.raises(AxisguardError, match="does not hook"):
        consumer.set_policy(elsewhere)
    assert consumer.policy.name == "flagging" and len(consumer.generations) == 1
