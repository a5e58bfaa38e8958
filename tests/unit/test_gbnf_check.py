import re

import pytest
from nas_ai_engine.gbnf_check import GrammarError, check

VALID = [
    'root ::= "yes" | "no"',
    'root ::= ("a" [b-c]*)+ digits\ndigits ::= [0-9]{1,3} # a comment\n',
    'root ::= object\nobject ::= "{" (\n  pair ("," pair)*\n)? "}"\npair ::= [a-z]+ ":" [^\\n"]+\n',
    'root ::= "\\u00e9" . [\\x41-\\x5A]?',
]
INVALID = [
    ("root ::= ((((", "missing `)`"),
    ('root ::= "abc', "unterminated string literal"),
    ('x ::= "a"', "no `root` rule"),
    ("root ::= y", "rule `y` is used but not defined"),
    ("root ::= [a-", "unterminated character class"),
    ('root ::= a)\na ::= "x"', "unexpected `)`"),
    ('root ::= "a"{3,1}', "n < m"),
    ('root ::= "a" "b"\nroot ::= "c"', "defined twice"),
    ("root ::=", "empty rule body"),
    ('root ::= "\\q"', "unknown escape"),
    ("root ::= " + "(" * 100 + '"a"' + ")" * 100, "nested deeper than 64"),
]


@pytest.mark.parametrize("grammar", VALID)
def test_valid_grammars_pass(grammar):
    check(grammar)


@pytest.mark.parametrize("grammar, reason", INVALID)
def test_invalid_grammars_are_refused_with_the_reason(grammar, reason):
    with pytest.raises(GrammarError, match=re.escape(reason)):
        check(grammar)
