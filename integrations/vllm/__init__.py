"""axisguard inside vLLM: every request scored in the engine, counter-steered or stopped by policy.

Serving (checks the pack against the model first, then execs vLLM's OpenAI server)::

    axisguard serve --model smollm2-135m --pack out/pack [--policy policy.yaml] [vLLM args...]

or, with an existing vLLM launch, by environment only (the plugin is an installed entry point)::

    AXISGUARD_PACK=out/pack AXISGUARD_POLICY=policy.yaml VLLM_PLUGINS=axisguard \\
        PROMETHEUS_MULTIPROC_DIR=/fresh/dir python -m vllm.entrypoints.openai.api_server --model ...

Offline::

    os.environ["AXISGUARD_PACK"] = "out/pack"        # before the LLM is created
    llm = LLM(model=...)
    outputs = llm.generate(prompts, SamplingParams(extra_args={"axisguard": {"enabled": True}}))
    attach_verdicts(llm, outputs)                     # integrations.vllm.verdicts

What it does and where (the modules the next change will touch first are marked *):

=====================  ========================================================================
``config``             environment / config file, ``AXISGUARD_DISABLE=1`` kill switch; the
                       Prometheus multiprocess dir; per-request overrides (``extra_args``)
``plugin``             ``vllm.general_plugins`` entry point; no configuration, no effect at all
``engine`` *           engine settings (compiled + prefix caching kept, eager switch, refusals) and
                       the check that the pack matches the served model (shape, architecture, name)
``worker``             attaches a session after ``load_model``; the ``axisguard_call`` RPC
``session`` *          request lifecycle, per-step context, the tap's safety net; ``GuardConsumer``
``tap_op`` *           ``axisguard::tap`` custom op after each guarded layer (compiled, eager, CUDA
                       graphs), the tap's place in vLLM's compile-cache key
``hooks``              residual stream of vLLM's fused layers, steering delta added in place
``prefix_cache``       prefix caching on: only blocks that can never hold steered KV are cached
``row_mapping``        which request owns each row of the flat batch, every step
``stop``               stop = forced EOS (a logits processor); overrides validated at admission
``tensor_parallel``    TP: rank 0 scores and decides, every rank adds the same delta
``verdicts`` *         finished verdicts kept (bounded, client ids matched to internal ids) and
                       the offline verdict API (``get_verdict``, ``attach_verdicts``)
``choices``            which choice of a response an engine request is (``n > 1``, several prompts)
``live_policy``        policy generations in the worker: swapped between steps, running requests
                       keep theirs
``routes`` *           ``GET /axisguard/requests/{id}``, ``GET /axisguard/status``,
                       ``GET|POST /axisguard/policy``
``policy_reload``      API server: the policy in force, its file watch and the POST route's checks
``inband``             ASGI middleware: the verdict in each response, ``content_filter``, headers
``route_auth``         every ``/axisguard`` route requires vLLM's ``--api-key`` when one is set
``capture``            activation capture through the same tap, and ``VllmExtractor`` for
                       ``axisguard calibrate/adapt --engine vllm``
=====================  ========================================================================

One hidden state, from vLLM to a Prometheus sample (five files):

1. ``integrations/vllm/tap_op.py``: the ``axisguard::tap`` custom op after decoder layer L (a node
   of the compiled graph, or an eager call) hands the layer output to the session's per-step
   callback (``install_taps``, ``tap_context``); ``hooks.residual_stream`` un-fuses vLLM's
   ``(hidden, residual)``.
2. ``integrations/vllm/session.py``: ``GuardSession._on_layer`` cuts the real rows of the flat batch
   with this step's ``StepRows``; ``GuardConsumer.on_step`` passes them on as a ``RowMap``.
3. ``guard/runtime.py``: ``Guard.on_hidden`` takes the rows at the pack's scoring layer to float32,
   asks the monitor for z-scores and policy events, and every ``metrics_every`` steps
   ``flush_metrics`` reads the monitor's accumulators.
4. ``guard/monitor.py``: ``Monitor.score`` (z = (cos(h - mean, v) - offset) / scale, all axes in one
   matmul) and ``Monitor.update`` (rules, steering, and the per-axis z histogram buckets on device).
5. ``guard/metrics.py``: ``GuardMetrics.observe_scores`` adds the buckets to the
   ``axisguard_token_score`` histogram, which vLLM's ``/metrics`` serves from
   ``PROMETHEUS_MULTIPROC_DIR``.

The demo/test HTTP harness (a guarded server as a context manager) is ``scripts/guarded_server.py``.

Known limits: no pipeline parallelism, no speculative decoding, V1 model runner only; a request
preempted and recomputed by vLLM has its recomputed tokens scored again (token counts, not rule
firing, are affected: a rule fires at most once); a prefix-cache hit's tokens are not computed,
hence not scored or counted (prompt scores are unchanged: the last prompt token is always
computed, see ``prefix_cache``); ``stop`` cannot end a request that sets
``ignore_eos`` without stop token ids (the verdict still says ``stopped``).
"""
