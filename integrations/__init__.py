"""Engine adapters (transformers, vLLM) and the model zoo; they import guard, never the reverse."""
