"""The Builder and the LLM backends it talks to (Anthropic, simulated, replay)."""
