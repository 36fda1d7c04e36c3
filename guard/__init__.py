"""axisguard core: engine-free anchor-space maths, bundles, monitor, policy, steering and metrics.

Nothing in this package imports an inference engine (vLLM) or transformers model code; the
integrations package adapts engines to it, and the CLI wires the two together.
"""

__version__ = "0.1.0"
