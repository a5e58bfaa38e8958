"""A strict validator for GBNF grammars, run before a request's `grammar` reaches llama.cpp.

llama-cpp-python 0.3.36 crashes (SIGSEGV in libllama) on a grammar llama.cpp fails to parse, so
every grammar the engine receives must already be known to parse. This accepts the GBNF subset
llama.cpp documents (rules, alternation, grouping, literals, character classes, `.`, `*+?` and
`{m,n}` repetition, comments) and refuses the rest with the position and the reason.
Pure Python, no llama.cpp: it never touches the parser it protects.
"""

import re

MAX_GRAMMAR_BYTES = 64 * 1024
MAX_NESTING = 64
NAME = re.compile(r"[A-Za-z0-9-]+")
REPEAT = re.compile(r"\{\s*(\d+)\s*(,\s*(\d*)\s*)?\}")
MAX_REPEAT = 1000


class GrammarError(ValueError):
    pass


class _Parser:
    def __init__(self, text: str):
        self.text = text
        self.pos = 0
        self.defined: dict[str, int] = {}
        self.used: dict[str, int] = {}

    def fail(self, reason: str) -> None:
        line = self.text.count("\n", 0, self.pos) + 1
        column = self.pos - (self.text.rfind("\n", 0, self.pos) + 1) + 1
        raise GrammarError(f"{reason} at line {line}, column {column}")

    def skip_space(self, newlines: bool) -> None:
        while self.pos < len(self.text):
            char = self.text[self.pos]
            if char == "#":
                end = self.text.find("\n", self.pos)
                self.pos = len(self.text) if end < 0 else end
            elif char in " \t\r" or (newlines and char == "\n"):
                self.pos += 1
            else:
                return

    def peek_rule_start(self) -> bool:
        match = NAME.match(self.text, self.pos)
        if not match:
            return False
        rest = self.text[match.end():].lstrip(" \t")
        return rest.startswith("::=")

    def escape(self) -> None:
        # at a backslash
        self.pos += 1
        if self.pos >= len(self.text):
            self.fail("unfinished escape")
        char = self.text[self.pos]
        lengths = {"x": 2, "u": 4, "U": 8}
        if char in lengths:
            digits = self.text[self.pos + 1:self.pos + 1 + lengths[char]]
            if len(digits) != lengths[char] or not all(c in "0123456789abcdefABCDEF" for c in digits):
                self.fail(f"bad \\{char} escape")
            self.pos += 1 + lengths[char]
        elif char in 'nrt\\"[]-^':
            self.pos += 1
        else:
            self.fail(f"unknown escape \\{char}")

    def literal(self) -> None:
        self.pos += 1
        while True:
            if self.pos >= len(self.text) or self.text[self.pos] == "\n":
                self.fail("unterminated string literal")
            char = self.text[self.pos]
            if char == '"':
                self.pos += 1
                return
            if char == "\\":
                self.escape()
            else:
                self.pos += 1

    def char_class(self) -> None:
        self.pos += 1
        if self.text.startswith("^", self.pos):
            self.pos += 1
        empty = True
        while True:
            if self.pos >= len(self.text) or self.text[self.pos] == "\n":
                self.fail("unterminated character class")
            char = self.text[self.pos]
            if char == "]":
                if empty:
                    self.fail("empty character class")
                self.pos += 1
                return
            empty = False
            if char == "\\":
                self.escape()
            else:
                self.pos += 1

    def sequence(self, depth: int) -> None:
        inside = depth > 0
        count = 0
        while True:
            self.skip_space(newlines=inside)
            if self.pos >= len(self.text):
                break
            char = self.text[self.pos]
            if char == '"':
                self.literal()
            elif char == "[":
                self.char_class()
            elif char == ".":
                self.pos += 1
            elif char == "(":
                if depth >= MAX_NESTING:
                    self.fail(f"groups nested deeper than {MAX_NESTING}")
                self.pos += 1
                self.alternates(depth + 1)
                self.skip_space(newlines=True)
                if not self.text.startswith(")", self.pos):
                    self.fail("missing `)`")
                self.pos += 1
            elif NAME.match(char):
                if not inside and self.peek_rule_start():
                    break
                match = NAME.match(self.text, self.pos)
                self.used.setdefault(match.group(), self.pos)
                self.pos = match.end()
            else:
                break
            count += 1
            self.skip_space(newlines=inside)
            while self.pos < len(self.text) and self.text[self.pos] in "*+?{":
                if self.text[self.pos] == "{":
                    match = REPEAT.match(self.text, self.pos)
                    if not match:
                        self.fail("malformed repetition {m,n}")
                    low = int(match.group(1))
                    high = match.group(3)
                    if low > MAX_REPEAT or (high and int(high) > MAX_REPEAT):
                        self.fail(f"repetition above {MAX_REPEAT}")
                    if high and int(high) < low:
                        self.fail("repetition {m,n} with n < m")
                    self.pos = match.end()
                else:
                    self.pos += 1
                self.skip_space(newlines=inside)
        if count == 0 and depth == 0:
            self.fail("empty rule body")

    def alternates(self, depth: int) -> None:
        self.sequence(depth)
        while True:
            self.skip_space(newlines=depth > 0)
            if not self.text.startswith("|", self.pos):
                return
            self.pos += 1
            self.sequence(depth)

    def grammar(self) -> None:
        while True:
            self.skip_space(newlines=True)
            if self.pos >= len(self.text):
                break
            match = NAME.match(self.text, self.pos)
            if not match:
                self.fail("expected a rule name")
            name = match.group()
            self.pos = match.end()
            self.skip_space(newlines=False)
            if not self.text.startswith("::=", self.pos):
                self.fail(f"expected `::=` after rule name `{name}`")
            self.pos += 3
            if name in self.defined:
                self.fail(f"rule `{name}` defined twice")
            self.defined[name] = self.pos
            self.alternates(0)
            self.skip_space(newlines=False)
            if self.pos < len(self.text) and self.text[self.pos] != "\n":
                self.fail(f"unexpected `{self.text[self.pos]}`")
        if "root" not in self.defined:
            raise GrammarError("no `root` rule")
        for name, position in self.used.items():
            if name not in self.defined:
                self.pos = position
                self.fail(f"rule `{name}` is used but not defined")


def check(grammar: str) -> None:
    """Raise GrammarError with the reason unless `grammar` is well-formed GBNF."""
    if len(grammar.encode()) > MAX_GRAMMAR_BYTES:
        raise GrammarError(f"grammar longer than {MAX_GRAMMAR_BYTES} bytes")
    if "\x00" in grammar:
        raise GrammarError("grammar contains a NUL character")
    _Parser(grammar).grammar()
