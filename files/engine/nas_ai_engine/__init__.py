"""The engine side of the NAS AI stack: llama-cpp-python's OpenAI-compatible server, wrapped with
a lock-free health endpoint, a warm-up before the port opens, and a guard for hostile input."""
