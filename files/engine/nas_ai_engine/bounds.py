"""Bounds on a generation request's fields, checked before the engine sees them: each field an
engine would take unbounded (many choices, thousands of logit biases, huge log-probability lists,
negative lengths that llama.cpp reads as "unlimited" or out of range) gets a 400 naming the field
and its limit. Pure Python: the front applies it to every generating request."""

from dataclasses import dataclass

# Sampler integers llama.cpp takes as counts or lengths: negative values are meaningless there.
NON_NEGATIVE = ("top_k", "min_keep", "dry_allowed_length", "n_indent", "t_max_predict_ms")
# Window lengths where llama.cpp reads -1 as "the whole context".
WHOLE_CONTEXT_OR_MORE = ("repeat_last_n", "dry_penalty_last_n", "n_keep")
MAX_TOKENS_FIELDS = ("max_tokens", "max_completion_tokens", "n_predict")
LOGPROBS_FIELDS = ("top_logprobs", "n_probs")
CHOICES_FIELDS = ("n", "n_cmpl")  # n_cmpl: llama-server's own name for n
MIROSTAT_VERSIONS = (0, 1, 2)


@dataclass(frozen=True)
class Limits:
    max_tokens: int
    max_logprobs: int
    max_logit_bias: int
    default_max_tokens: int | None = None  # set by the operator: filled in where a request has none


class OutOfBounds(ValueError):
    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field


def _integer(request: dict, field: str) -> int | None:
    value = request.get(field)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise OutOfBounds(field, f"`{field}` must be an integer, not {type(value).__name__}")
    return value


def _at_most(request: dict, field: str, low: int, high: int, why: str) -> None:
    value = _integer(request, field)
    if value is not None and not low <= value <= high:
        raise OutOfBounds(field, f"`{field}` is {value}; it must be from {low} to {high} ({why})")


def check(request: dict, limits: Limits) -> None:
    """Raise OutOfBounds for the first field outside its limit."""
    for field in MAX_TOKENS_FIELDS:  # from 1: llama-cpp-python reads 0 as "no limit"
        _at_most(request, field, 1, limits.max_tokens, "this service's largest answer in tokens")
    for field in CHOICES_FIELDS:
        n = request.get(field)
        if n is not None and (isinstance(n, bool) or n != 1):
            raise OutOfBounds(field, f"`{field}` is {n!r}; this service generates one choice per request: "
                                     "send 1 or leave it out")
    prompt = request.get("prompt")
    # A list of strings (or of token lists) is one generation per item on one ticket.
    if isinstance(prompt, list) and any(isinstance(item, (str, list)) for item in prompt) and len(prompt) > 1:
        raise OutOfBounds("prompt", f"`prompt` holds {len(prompt)} prompts; this service takes one prompt per "
                                    "request: send them one by one")
    logprobs = request.get("logprobs")
    if not isinstance(logprobs, bool):  # chat: true/false; completions: how many
        _at_most(request, "logprobs", 0, limits.max_logprobs, "the most log-probabilities per token")
    for field in LOGPROBS_FIELDS:
        _at_most(request, field, 0, limits.max_logprobs, "the most log-probabilities per token")
    bias = request.get("logit_bias")
    if bias is not None:
        if not isinstance(bias, (dict, list)):
            raise OutOfBounds("logit_bias", "`logit_bias` must be an object of token: bias")
        if len(bias) > limits.max_logit_bias:
            raise OutOfBounds("logit_bias", f"`logit_bias` has {len(bias)} entries; at most "
                                            f"{limits.max_logit_bias} are accepted")
    for field in NON_NEGATIVE:
        _at_most(request, field, 0, 2**31 - 1, "a count, never negative")
    for field in WHOLE_CONTEXT_OR_MORE:
        _at_most(request, field, -1, 2**31 - 1, "-1 for the whole context, else a count")
    mirostat = _integer(request, "mirostat")
    if mirostat is not None and mirostat not in MIROSTAT_VERSIONS:
        raise OutOfBounds("mirostat", f"`mirostat` is {mirostat}; it must be 0 (off), 1 or 2")


def filled_in(request: dict, limits: Limits) -> bool:
    """Give a request without any answer length the operator's default; whether it changed."""
    if limits.default_max_tokens is None or any(request.get(field) is not None for field in MAX_TOKENS_FIELDS):
        return False
    request["max_tokens"] = limits.default_max_tokens
    return True
