"""Data for every host. Each key, its default and what it does: tasks/settings.py.
Uncomment and change what your NAS needs; per-host values go in the inventory."""

# model_name = "qwen2.5-1.5b-instruct-q4_k_m"
# model_source = "/srv/models/qwen2.5-1.5b-instruct-q4_k_m.gguf"   # or an https:// URL
# model_sha256 = "<sha256sum of that file>"
# gateway_api_keys = {"alice": "sk-...", "bob": {"key": "sk-...", "rate_per_minute": 2}}
# gateway_tls = "self-signed"
