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

What it does and where:

=====================  ========================================================================
``config``             environment / config file; ``AXISGUARD_DISABLE=1`` kill switch
``plugin``             ``vllm.general_plugins`` entry point; no configuration, no effect at all
``engine_settings``    what the guard changes in the engine config (little), refusals
``model_check``        the pack must match the served model (shape, architecture, name)
``worker``             attaches a session after ``load_model``; the ``axisguard_call`` RPC
``session``            request lifecycle, per-step context, the tap's safety net
``tap_op``             ``axisguard::tap`` custom op after each guarded layer (compiled/eager/CUDA graphs)
``hooks``              residual stream of vLLM's fused layers, steering delta added in place
``prefix_cache``       prefix caching on: only never-steerable blocks are cached
``row_mapping``        which request owns each row of the flat batch, every step
``overrides``          per-request overrides in ``extra_args`` / ``vllm_xargs``
``stop``               stop = forced EOS (a logits processor); overrides validated at admission
``tensor_parallel``    TP: rank 0 scores and decides, every rank adds the same delta
``verdict_store``      finished verdicts kept (bounded), client ids matched to internal ids
``routes``             ``GET /axisguard/requests/{id}``, ``GET /axisguard/status``
``verdicts``           offline verdict API (``get_verdict``, ``attach_verdicts``)
``metrics_dir``        ``PROMETHEUS_MULTIPROC_DIR`` cleaned at start (no doubled counters)
``capture``            activation capture through the same tap (``--engine vllm`` extraction)
``extraction``         ``VllmExtractor`` for ``axisguard calibrate/adapt --engine vllm``
``client``             a guarded server as a context manager + HTTP calls (demo, tests)
=====================  ========================================================================

Known limits: no pipeline parallelism, no speculative decoding, V1 model runner only; a request
preempted and recomputed by vLLM has its recomputed tokens scored again (token counts, not rule
firing, are affected: a rule fires at most once); ``stop`` cannot end a request that sets
``ignore_eos`` without stop token ids (the verdict still says ``stopped``).
"""
