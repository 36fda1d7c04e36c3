# The image the Helm chart (charts/axisguard) runs: vLLM's official OpenAI server image with axisguard
# installed, so the plugin's entry points (vllm.general_plugins / vllm.endpoint_plugins) are present.
#
#   docker build -t REGISTRY/axisguard/vllm-axisguard:0.1.0 .            # from the repository root
#   docker build --build-arg VLLM_IMAGE=vllm/vllm-openai:vX.Y.Z ...      # another vLLM release
#
# Not built by this repository's CI (no container runtime there): build and test it on your side.
ARG VLLM_IMAGE=vllm/vllm-openai:v0.32.0
FROM ${VLLM_IMAGE}

COPY . /opt/axisguard-src
# Keep the base image's vLLM and torch (built for its CUDA): pip must satisfy axisguard around them,
# and fails loudly if it cannot instead of swapping them out.
RUN python3 -m pip freeze | grep -iE '^(vllm|torch)==' > /tmp/base-pins.txt \
 && python3 -m pip install --no-cache-dir -c /tmp/base-pins.txt "/opt/axisguard-src[vllm]" \
 && rm -rf /opt/axisguard-src /tmp/base-pins.txt \
 && python3 -c "from importlib.metadata import entry_points as e; \
assert 'axisguard' in {p.name for p in e(group='vllm.general_plugins')}, 'axisguard plugin not registered'" \
 && axisguard --help > /dev/null

# Non-root, as the chart's securityContext requires; HOME on the chart's writable /tmp emptyDir.
ENV HOME=/tmp
USER 1000:1000
# The base's ENTRYPOINT (vLLM's server) stays; the chart sets its own command and arguments.
