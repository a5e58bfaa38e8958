import random
import re
import time

import pytest
from nas_ai_engine.gbnf_check import MAX_GRAMMAR_BYTES, MAX_NESTING, GrammarError, check

# What llama.cpp (as vendored by llama-cpp-python 0.3.36) accepts; tests/lab/test_5_grammar.py
# runs these through llama.cpp itself too.
VALID = [
    'root ::= "yes" | "no"',
    'root ::= ("a" [b-c]*)+ digits\ndigits ::= [0-9]{1,3} # a comment\n',
    'root ::= object\nobject ::= "{" (\n  pair ("," pair)*\n)? "}"\npair ::= [a-z]+ ":" [^\\n"]+\n',
    'root ::= "\\u00e9" . [\\x41-\\x5A]?',
    # The last definition of a rule wins.
    'root ::= "a" "b"\nroot ::= "c"',
    # An empty rule body, an empty alternative, an empty class, an empty literal.
    "root ::=",
    'root ::= | "a"',
    'root ::= [^] "a" ""',
    "root ::= [^\\x01-\\U0010FFFF] [a-a]",  # NUL alone; one character
    # The empty grammar is no grammar: llama.cpp samples unconstrained.
    "",
    # 2 rules (the group, `?`'s) repeated 1000 times: exactly llama.cpp's threshold of 2000.
    'root ::= ("a"?){1000}',
    'root ::= "a"{2000}',
    # A maximum above 2000 means no maximum; leading zeros are fine.
    'root ::= "a"{0,5000} "b"{0,18446744073709551615} "c"{007}',
    # Inside parentheses newlines, `\r` too, are spaces, also inside `{}`.
    'root ::= ("a"{1\n,\n2\n})',
    'root ::= ("a"\r"b")',
    # A lone `\r` or `\r\n` ends a rule like `\n`; a comment ends at `\r`.
    'root ::= "a"\rb ::= "b"',
    'root ::= "a" # comment\r\n',
    # Raw newlines inside a literal or a class.
    'root ::= "a\nb" [\n]',
    # Newlines after `::=` and after `|`.
    'root ::=\n  "a" |\n  "b"',
    # `-` first or last in a class is a character; `[--/]` a range from `-`.
    'root ::= [a-] [-a] [--/] [\\-\\]]',
    # A name repeated {0} times vanishes; a rule referenced only after an empty one is fine.
    'root ::= "a" x{0}',
    'root ::= x "a"\nx ::= "" | "b"',
    # `(x)*` with x nullable is no left recursion to llama.cpp: the group has no empty alternative.
    'root ::= (x)*\nx ::= | "a"',
    # Tokens by id.
    "root ::= " + "(" * MAX_NESTING + '"a"' + ")" * MAX_NESTING,
    'root ::= "a"' + "+" * 1_000,
]
# (grammar, the reason in the error message)
INVALID = [
    ("root ::= ((((", "missing `)`"),
    ('root ::= "abc', "unterminated string literal"),
    ('x ::= "a"', "no `root` rule"),
    ("root ::= y", "rule `y` is used but not defined"),
    ("root ::= [a-", "unterminated character class"),
    ('root ::= a)\na ::= "x"', "unexpected `)`"),
    ('root ::= "a"{3,1}', "n < m"),
    ('root ::= "\\q"', "unknown escape"),
    # Left recursion, direct, indirect, after a rule with an empty alternative, hidden in `*`.
    ('root ::= root "a" | "a"', "left recursion"),
    ('root ::= a\na ::= root "x" | "y"', "left recursion"),
    ('root ::= x root "a" | "b"\nx ::= | "c"', "left recursion"),
    ('root ::= x*\nx ::= | "a"', "left recursion"),
    ('root ::= ("" | "a")*', "left recursion"),
    ('root ::= "b"\nunused ::= unused "a"', "left recursion"),
    # Repetition products above 2000, a minimum above 2000.
    ('root ::= ("a"?){1001}', "above 2000"),
    ('root ::= ("a"{0,1000}){0,1000}', "above 2000"),
    ('root ::= (a b c){501}\na ::= "a"\nb ::= "b"\nc ::= "c"', "above 2000"),
    ('root ::= "a"{2001}', "repetition above 2000"),
    ('root ::= "a"{0,18446744073709551616}', "number too large"),
    ('root ::= "a"{' + "9" * 5000 + "}", "number too large"),
    ('root ::= ""*', "expecting an item before the repetition"),
    # A newline inside `{}` outside parentheses; digits that are not ASCII.
    ('root ::= "a"{1\n}', "expecting `,` or `}`"),
    ('root ::= "a"{\n1}', "expecting an integer"),
    ('root ::= "a"{\u0661}', "expecting an integer"),
    ('root ::= "a"{1,\uff13}', "expecting `}`"),
    # `\^` is no escape, in literals or classes.
    ('root ::= "\\^"', "unknown escape \\^"),
    ("root ::= [\\^a]", "unknown escape \\^"),
    ('root ::= "\\x4"', "expecting 2 hex digits"),
    # A lone `\r` outside parentheses ends the rule.
    ('root ::= "a" \r "b"', "expecting a rule name"),
    ('root ::= "a"\n| "b"', "expecting a rule name"),
    ('root ::= "a"\x0b', "unexpected '\\x0b'"),
    ('root # comment\n::= "a"', "expecting `::=`"),
    # A lone UTF-16 surrogate: not encodable, llama-cpp-python would raise a 500.
    ('root ::= "\ud800"', "lone UTF-16 surrogate"),
    # A root that vanished under {0} makes llama.cpp read past its rules.
    ("x ::= root{0}", "no `root` rule"),
    ('root ::= x{0} ("a")', "rule `x` is used but not defined"),
    ("root ::= <[4294967296]>", "token id too large"),
    ("root ::= <abc", "expecting `>`"),
]
JSON = r"""
root ::= value
value ::= object | array | string | number | ("true" | "false" | "null") ws
object ::= "{" ws (member ("," ws member)*)? "}" ws
member ::= string ":" ws value
array ::= "[" ws (value ("," ws value)*)? "]" ws
string ::= "\"" (plain | "\\" (["\\/bfnrt] | "u" [0-9a-fA-F]{4}))* "\"" ws
plain ::= [^"\\\x00-\x1F\x7F]
number ::= "-"? ("0" | [1-9] [0-9]{0,15}) ("." [0-9]+)? ([eE] [-+]? [0-9]{1,3})? ws
ws ::= | " " | "\n" [ \t]{0,20}
"""
# Refused on purpose where llama.cpp would accept: (grammar, the limit's name).
DELIBERATE = [
    ("root ::= " + "(" * 100 + '"a"' + ")" * 100, "nesting"),
    ('root ::= "' + "a" * MAX_GRAMMAR_BYTES + '"', "size"),
    ('root ::= "a"\x00', "nul"),
    ("root ::= <|im_end|>", "token-text"),
    ("root ::= <[2]> !<[99999]>", "token-id"),
    ("root ::= []", "empty-class"),
    ('root ::= "a" x | "b"\nx ::= [z-a]', "empty-class"),
    ("root ::= [^\\x00-\\U0010FFFF]", "empty-class"),
    ("root ::= [^\\x00-\\x7F\\x80-\\U0010FFFF]", "empty-class"),
    ("root ::= [\\]-\\-]", "empty-class"),  # a range from `]` down to `-`
    ('root ::= "' + "a" * 600 + '"{2000}', "expansion"),
    # Each choice of 16 rules doubles llama.cpp's first stacks: 2^16, compared pairwise.
    ("root ::= a0\n" + "".join(f'a{i} ::= a{i + 1} "x" | a{i + 1} "y"\n' for i in range(16)) + 'a16 ::= "z"',
     "search"),
]


@pytest.mark.parametrize("grammar", VALID + [JSON])
def test_valid_grammars_pass(grammar):
    check(grammar)


@pytest.mark.parametrize("grammar, reason", INVALID)
def test_invalid_grammars_are_refused_with_the_reason(grammar, reason):
    with pytest.raises(GrammarError, match=re.escape(reason)) as refusal:
        check(grammar)
    assert refusal.value.limit is None  # llama.cpp refuses it too


@pytest.mark.parametrize("grammar, limit", DELIBERATE)
def test_deliberate_limits_are_named(grammar, limit):
    with pytest.raises(GrammarError) as refusal:
        check(grammar)
    assert refusal.value.limit == limit


HOSTILE = {
    "deep parentheses": "root ::= " + "(" * 65_000,
    "many bounded repetitions": "root ::= " + '"a"{0,2000} ' * 5_000,
    "many optional items": "root ::= " + "x? " * 21_000 + '\nx ::= "a"',
    "many nullable references": "root ::= " + "x " * 32_000 + '\nx ::= | "a"',
    "a long chain of rules": "".join(f"a{i} ::= a{i + 1}\n" for i in range(4_000)) + 'a4000 ::= "z"\nroot ::= a0',
    "one long comment": "#" * 65_000,
    "a huge number": 'root ::= "a"{' + "1" * 65_000 + "}",
    "many alternatives": "root ::= " + '"a" | ' * 10_000 + '"b"',
    # Each `+` repeats all before it: nodes nest, and items grow, with every one.
    "chained repetitions": 'root ::= "a"' + "+" * 1_400,
    "chained repetitions, too many": 'root ::= "a"' + "+" * 60_000,
    "chains of nullable items": "root ::= " + "x{0,2000} " * 6_000 + '\nx ::= | "a"',
}


@pytest.mark.parametrize("name", HOSTILE)
def test_64_kib_of_hostile_text_is_judged_quickly(name):
    started = time.monotonic()
    try:
        check(HOSTILE[name])
    except GrammarError:
        pass
    assert time.monotonic() - started < 2


def test_random_text_only_ever_raises_grammar_error():
    chance = random.Random(20240611)
    alphabet = 'root ::=|()[]{}*+?."\\-^#<>!0123456789abxu \t\r\n\u00e9\ud800'
    for _ in range(3_000):
        text = "root ::= " + "".join(chance.choice(alphabet) for _ in range(chance.randrange(40)))
        try:
            check(text)
        except GrammarError:
            pass
