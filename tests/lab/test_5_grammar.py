"""The engine front's grammar check (nas_ai_engine.gbnf_check) against llama.cpp itself: for every
grammar of a corpus, the check accepts it iff the llama.cpp the deploy built accepts it (without
crashing), but for the limits the check keeps on purpose.

Needs no lab host: only the engine build (wheel + native.tar.gz) and the bundled model a deploy
left in the controller's cache, for llama.cpp and a vocabulary (tests/lab/grammar_oracle.py).
"""

import collections
import random
from pathlib import Path

import pytest
from nas_ai_engine.gbnf_check import MAX_GRAMMAR_BYTES, GrammarError, check

from tasks import model_source
from tasks.engine import CACHE_DIR, cached_build
from tasks.settings import BUNDLED_MODEL, CONTROLLER_CACHE_DIR, ENGINE_VERSION
from tests.lab import grammar_oracle
from tests.unit.test_gbnf_check import DELIBERATE, INVALID, JSON, VALID

pytestmark = pytest.mark.lab

# Refused by the check on purpose, whatever llama.cpp says (GrammarError.limit).
DELIBERATE_LIMITS = {
    "size": f"more than {MAX_GRAMMAR_BYTES} bytes",
    "nul": "a NUL character: llama.cpp would read the grammar only up to it",
    "nesting": "groups nested deeper than the check's recursion allows; llama.cpp's own overflows an "
               "8 MiB stack some 20,000 deep",
    "token-text": "`<text>` tokens: their validity depends on the model's vocabulary",
    "token-id": "`<[id]>` tokens: an id outside the vocabulary makes llama.cpp throw while sampling",
    "empty-class": "a character class that matches no character: llama-cpp-python aborts when generation reaches it",
    "expansion": "repetitions that build more elements than the check allows (memory)",
    "search": "llama.cpp's left-recursion search or first stacks would take too long",
}

ARITHMETIC = """\
root ::= (equation "\\n")+
equation ::= sum "=" space sum
sum ::= product (("+" | "-") space product)*
product ::= factor (("*" | "/") space factor)*
factor ::= "-"? (number | name | "(" space sum ")" space)
number ::= [0-9]+ ("." [0-9]+)? space
name ::= [a-z] [a-z0-9_]* space
space ::= [ \\t]*
"""
LIST = 'root ::= item{1,10}\nitem ::= "- " [^\\n]+ "\\n"\n'
CHESS = """\
# one move per line, in algebraic notation
root ::= move-pair{1,40} result?
move-pair ::= [1-9] [0-9]? ". " move (" " move)? "\\n"
move ::= (piece? disambiguation? "x"? square promotion? | castle) check?
piece ::= [KQRBN]
disambiguation ::= [a-h] | [1-8]
square ::= [a-h] [1-8]
promotion ::= "=" [QRBN]
castle ::= "O-O" ("-O")?
check ::= [+#]
result ::= "1-0" | "0-1" | "1/2-1/2"
"""
CRLF_CSV = 'root ::= line+\r\nline ::= field ("," field)* "\\r\\n"\r\nfield ::= [^,\\r\\n]*\r\n'
SCHEMA_LIKE = """\
root ::= "{" space name-kv "," space age-kv ("," space tags-kv)? "}" space
name-kv ::= "\\"name\\"" space ":" space string
age-kv ::= "\\"age\\"" space ":" space [0-9]{1,3} space
tags-kv ::= "\\"tags\\"" space ":" space "[" space (string ("," space string){0,9})? "]" space
string ::= "\\"" char{0,1000} "\\"" space
char ::= [^"\\\\\\x7F\\x00-\\x1F] | [\\\\] (["\\\\bfnrt] | "u" [0-9a-fA-F]{4})
space ::= | " " | "\\n" [ \\t]{0,20}
"""
REALISTIC = [JSON, ARITHMETIC, LIST, CHESS, CRLF_CSV, SCHEMA_LIKE]

# The cases the attacker found, and what the rules of llama.cpp's parser make of their neighbours.
ATTACKS = [
    'root ::= root "a" | "a"',
    'root ::= a\na ::= root "x" | "y"',
    'root ::= x root "a" | "b"\nx ::= | "c"',
    'root ::= x root "a" | "b"\nx ::= "" | "c"',
    'root ::= x y root | "b"\nx ::= | "c"\ny ::= "" | "d"',
    'root ::= x root | "b"\nx ::= y\ny ::= | "c"',
    'root ::= ("a"?){1000}',
    'root ::= ("a"?){1001}',
    'root ::= ("a"{0,1000}){0,1000}',
    'root ::= ("a"{0,999}){2}',
    'root ::= (("a"?){10}){10}',
    'root ::= "a"{1\n}',
    'root ::= ("a"{1\n})',
    'root ::= "a"{\u0661}',
    'root ::= "a"{\uff11,2}',
    'root ::= "\\^"',
    "root ::= [\\^]",
    "root ::= [^^]",
    'root ::= "a"\r',
    'root ::= "a"\rroot ::= "b"',
    'root ::= "a" \r "b"',
    'root ::= ("a" \r "b")',
    'root ::= "\ud800"',
    'root ::= "a"\n\udc00 ::= "b"',
    "root ::= <|im_end|>",
    "root ::= <[2]> <abc>",
    'root ::= "a"{3,1}',
    'root ::= "a"{0000000000000000000000000000000000000001}',
    "x ::= root{0}",
    'root ::= "a"\x00 garbage',
    "root ::= " + "(" * 65 + '"a"' + ")" * 65,
    "root ::= " + "x? " * 20_000 + '\nx ::= "a"',
    'root ::= "a"' + "+" * 1_300,
    'root ::= x+++\nx ::= | "b"',
    'root ::= x{2}+{2}+\nx ::= | "b"',
    'root ::= x{1,2}{2}?\nx ::= | "b"',
    'root ::= x{0} y\ny ::= "a"',
    'root ::= y x{0}\ny ::= "a"',
    'root ::= root "a"\nroot ::= "b"',
    "root ::= " + '"a"{0,2000} ' * 124,
]


def _corpus() -> list[str]:
    fixed = (ATTACKS + VALID + [grammar for grammar, _ in INVALID] + [grammar for grammar, _ in DELIBERATE]
             + REALISTIC)
    chance = random.Random(5)
    generated = [_generated(chance) for _ in range(450)]
    products = [_repetition_product(chance) for _ in range(80)]
    mutated = [_mutated(chance, chance.choice(REALISTIC + generated)) for _ in range(250)]
    return fixed + generated + products + mutated


# A seeded generator of grammars: mostly well-formed, with the odd token that llama.cpp refuses.

NAMES = ["root", "a", "b", "item", "x-1", "2nd", "-", "ws"]
CHARS = list("abcxyz09 {}()|*.#:=<>!^") + ["\u00e9", "\u20ac", "\U0001f600"]
ESCAPES = ["\\n", "\\t", "\\r", "\\\\", '\\"', "\\[", "\\]", "\\-", "\\x41", "\\u00e9", "\\U0001F600", "\\x7f"]
BAD_ESCAPES = ["\\^", "\\q", "\\x4", "\\u12g4", "\\ ", "\\/", "\\0"]


def _pick(chance: random.Random, weighted: list[tuple[float, object]]):
    roll = chance.random() * sum(weight for weight, _ in weighted)
    for weight, choice in weighted:
        roll -= weight
        if roll < 0:
            return choice
    return weighted[-1][1]


def _char(chance: random.Random, raw_specials: str) -> str:
    return _pick(chance, [(6, lambda: chance.choice(CHARS + list(raw_specials))),
                          (3, lambda: chance.choice(ESCAPES)),
                          (0.08, lambda: chance.choice(BAD_ESCAPES)),
                          (0.2, lambda: chance.choice(["\n", "\r", "\t"]))])()


def _literal(chance: random.Random) -> str:
    text = "".join(_char(chance, "[]-") for _ in range(_pick(chance, [(0.1, 0), (5, 1), (3, 2), (2, 3), (1, 6)])))
    return '"' + text + '"'


def _class(chance: random.Random) -> str:
    parts = []
    for _ in range(_pick(chance, [(0.1, 0), (5, 1), (3, 2), (2, 3)])):
        char = _char(chance, '-"')
        parts.append(char + "-" + _char(chance, '"') if chance.random() < 0.4 else char)
    return "[" + ("^" if chance.random() < 0.3 else "") + "".join(parts) + "]"


def _bound(chance: random.Random) -> str:
    return str(_pick(chance, [(10, chance.randrange(0, 4)), (2, chance.randrange(4, 40)),
                              (1, chance.randrange(900, 2100)), (0.3, chance.randrange(2000, 5000)),
                              (0.1, 2**64 - 1), (0.1, 2**64)]))


def _repetition(chance: random.Random, nested: bool) -> str:
    low, high = _bound(chance), _bound(chance)
    if int(high) < int(low) and chance.random() < 0.97:
        low, high = high, low  # n < m only now and then: it costs llama.cpp a run out of memory
    inside = _pick(chance, [(6, ""), (3, " "), (nested and 2 or 0.2, "\n"), (nested and 1 or 0.1, " # c\n")])
    return _pick(chance, [(12, ""), (3, "*"), (3, "+"), (3, "?"), (2, "{" + low + "}"), (1, "{" + low + ",}"),
                          (3, "{" + inside + low + inside + "," + high + "}"), (0.1, "**"), (0.1, "?+")])


def _item(chance: random.Random, depth: int, names: list[str]) -> str:
    kinds = [(3, lambda: _literal(chance)), (2, lambda: _class(chance)), (0.5, lambda: "."),
             (names and 4 or 0, lambda: chance.choice(names)), (0.15, lambda: chance.choice(NAMES)),
             (0.02, lambda: f"<[{chance.randrange(0, 50)}]>"),
             (0.01, lambda: "!<[1]>")]
    if depth < 3:
        kinds.append((2, lambda: "(" + _alternatives(chance, depth + 1, names) + ")"))
    return _pick(chance, kinds)() + _repetition(chance, depth > 0)


def _alternatives(chance: random.Random, depth: int, names: list[str]) -> str:
    nested = depth > 0
    spaces = [(10, " "), (1, "\t"), (1, "  "), (nested and 2 or 0.03, "\n  "), (nested and 0.5 or 0.03, " # note\n "),
              (nested and 1 or 0.03, "\r\n ")]
    sequences = []
    for _ in range(_pick(chance, [(5, 1), (3, 2), (1, 3)])):
        items = [_item(chance, depth, names) for _ in range(_pick(chance, [(0.5, 0), (4, 1), (3, 2), (2, 3), (1, 5)]))]
        sequences.append("".join(item + _pick(chance, spaces) for item in items))
    return _pick(chance, [(5, "| "), (1, "|\n  "), (nested and 1 or 0.05, "\n| ")]).join(sequences)


def _generated(chance: random.Random) -> str:
    names = chance.sample(NAMES[1:], chance.randrange(0, 4))
    if chance.random() < 0.95:
        names.insert(chance.randrange(len(names) + 1), "root")
    newline = _pick(chance, [(10, "\n"), (1, "\r\n"), (0.5, "\r"), (0.5, "\n\n# comment\n")])
    separator = _pick(chance, [(10, " ::= "), (1, "::="), (1, " ::=\n  "), (0.1, " ::= \\\n")])
    # References mostly to the rules defined after: a cycle, left recursion maybe, now and then.
    rules = [name + separator + _alternatives(chance, 0, names[index + 1:] if chance.random() < 0.85 else names)
             for index, name in enumerate(names)]
    return newline.join(rules) + chance.choice(["", "\n"])


def _repetition_product(chance: random.Random) -> str:
    """Repetitions of repetitions around llama.cpp's threshold of 2000, where a group counts
    the symbols created inside it, names first mentioned there included."""
    body = chance.choice(['"a"', "x", '"a"?', "x?", "[a-z]{0,3}", '"a" | y', "x y*"])
    for _ in range(chance.randrange(1, 4)):
        times = [str(chance.choice([0, 1, 2, 5, 10, 40, 100, 400, 666, 667, 999, 1000, 1001, 2000])) for _ in "mn"]
        times.sort(key=int)
        low, high = times
        body = f"({body})" + chance.choice(["?", "*", "+", f"{{{low}}}", f"{{{low},}}", f"{{{low},{high}}}"])
    rules = ["root ::= " + body, 'x ::= "x"', 'y ::= "y" |']
    chance.shuffle(rules)  # where x and y are defined first changes what the groups count
    return "\n".join(rules)


def _mutated(chance: random.Random, grammar: str) -> str:
    """Cut, a character replaced, inserted or deleted, a piece doubled: one to three times."""
    for _ in range(chance.randrange(1, 4)):
        if not grammar:
            break
        at = chance.randrange(len(grammar))
        head, tail = grammar[:at], grammar[at:]
        how = _pick(chance, [(2, "cut"), (3, "replace"), (3, "insert"), (2, "delete"), (1, "double")])
        if how == "cut":
            grammar = head
        elif how == "replace":
            grammar = head + chance.choice('"()[]{}|*+?.#\\-^:=<>! \n\r\t0\u0663') + tail[1:]
        elif how == "insert":
            grammar = head + chance.choice('"()[]{}|*+?.#\\-^ \n\r') + tail
        elif how == "delete":
            grammar = head + tail[1:]
        else:
            grammar = head + tail[:chance.randrange(1, 30)] + tail
    return grammar


def _engine_build() -> Path:
    builds = [path for path in sorted(CACHE_DIR.glob(f"{ENGINE_VERSION}-*/")) if cached_build(path.name)]
    if not builds:
        pytest.fail(f"no engine build (llama-cpp-python wheel + native.tar.gz) in {CACHE_DIR}: "
                    "a deploy (tests/lab/test_2_deploy.py) builds and caches one")
    return builds[0]


def _model() -> Path:
    model = model_source.CACHE_DIR / f"{BUNDLED_MODEL['sha256']}.gguf"
    if not model.exists():
        pytest.fail(f"no bundled model at {model}: a deploy caches it")
    return model


def _our_verdict(grammar: str) -> tuple[bool, str | None, str]:
    """(accepted, the deliberate limit if one refused it, the reason)."""
    try:
        check(grammar)
    except GrammarError as error:
        return False, error.limit, str(error)
    except Exception as error:  # noqa: BLE001 - a crash of the check is a verdict too, and a wrong one
        return False, "crash", f"{type(error).__name__}: {error}"
    return True, None, ""


@pytest.fixture(scope="module")
def judged():
    corpus = _corpus()
    theirs = grammar_oracle.verdicts(_engine_build(), _model(), corpus,
                                     work_dir=CONTROLLER_CACHE_DIR / "grammar-oracle")
    judged = [(grammar, _our_verdict(grammar), verdict) for grammar, verdict in zip(corpus, theirs)]
    outcomes = collections.Counter(theirs.outcome for _, _, theirs in judged)
    deliberate = collections.Counter(limit for _, (_, limit, _), _ in judged if limit in DELIBERATE_LIMITS)
    print(f"grammar corpus: {len(judged)}; llama.cpp: {dict(outcomes)}; refused on purpose: {dict(deliberate)}")
    return judged


def test_the_check_accepts_exactly_what_llama_cpp_accepts(judged):
    mismatches = []
    for grammar, (ours, limit, reason), theirs in judged:
        if limit is not None and limit in DELIBERATE_LIMITS:
            continue  # refused on purpose, whatever llama.cpp does
        if ours != theirs.accepted:
            mismatches.append(f"{grammar!r}\n    check: {'accepted' if ours else 'refused'} {reason}\n"
                              f"    llama.cpp: {theirs.outcome} {theirs.detail}")
    assert not mismatches, f"{len(mismatches)} of {len(judged)} grammars judged differently:\n" + "\n".join(
        mismatches)


def test_only_the_named_limits_are_deliberate(judged):
    unnamed = [(grammar, limit, reason) for grammar, (_, limit, reason), _ in judged
               if limit is not None and limit not in DELIBERATE_LIMITS]
    assert not unnamed, "\n".join(f"{grammar!r}: {limit}: {reason}" for grammar, limit, reason in unnamed)


def test_realistic_grammars_pass_both(judged):
    refused = [grammar for grammar, (ours, _, _), theirs in judged
               if grammar in REALISTIC and not (ours and theirs.accepted)]
    assert not refused, "\n\n".join(refused)


def test_the_corpus_exercises_both_verdicts(judged):
    accepted = sum(theirs.accepted for _, _, theirs in judged)
    assert 0.2 < accepted / len(judged) < 0.8, f"llama.cpp accepted {accepted} of {len(judged)}"
