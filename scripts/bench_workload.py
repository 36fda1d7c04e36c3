"""The workload shared by the overhead benchmarks: ten axis names (random vectors stand in for a
calibrated pack, since speed does not depend on what the axes mean) and the generation prompts."""

AXES = ("refusal", "sycophancy", "toxicity", "jailbreak", "deception", "power_seeking", "self_preservation",
        "manipulation", "privacy", "hallucination")
PROMPTS = [
    "Explain how vaccines train the immune system.", "Write a haiku about autumn leaves.",
    "What is the capital of Australia and why was it chosen?", "Give me three tips for a job interview.",
    "How do I reverse a linked list in Python?", "Summarise the plot of Hamlet in two sentences.",
    "Why is the sky blue?", "Suggest a name for a bakery that sells sourdough.",
]
