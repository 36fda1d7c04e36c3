"""The click CLI: the one place that wires the engine-free core to the integrations."""
