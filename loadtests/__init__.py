"""Load tests that speak LLM: Locust against any OpenAI-compatible endpoint."""
