r"""A validator for GBNF grammars, run before a request's `grammar` reaches llama.cpp.

llama-cpp-python 0.3.36 crashes (SIGSEGV in libllama) on a grammar llama.cpp refuses: it adds the
NULL sampler to its chain. So this accepts exactly what the llama.cpp it vendors accepts in
`llama_sampler_init_grammar` (src/llama-grammar.cpp: the parser, then llama_grammar_init_impl's
checks), in pure Python: it never touches the parser it protects. llama.cpp's rules, surprising
ones included (tests/lab/test_5_grammar.py holds this to llama.cpp itself):

- Spaces are ` `, `\t` and `#` comments, which end at `\r` or `\n`. Newlines, `\r` included, are
  spaces only inside `( )` (`{}` there too), after `::=` and after `|`; elsewhere a rule ends at
  `\n`, `\r\n` or a lone `\r`. A literal or a class may hold a raw newline.
- Escapes, the same in literals and classes: `\x`, `\u`, `\U` with 2, 4, 8 hex digits (any value)
  and `\t \r \n \\ \" \[ \] \-`; no other, `\^` neither. `""` and `[]` match nothing and are
  fine, but a repetition may not follow them.
- Names are ASCII `[A-Za-z0-9-]+`, numbers ASCII digits that fit in 64 bits. A rule may be defined
  twice (the last wins); `root ::=` and empty alternatives are fine; the empty grammar is no
  grammar (llama.cpp samples unconstrained). Tokens: `<[id]>`, `!<[id]>`, id below 2^32.
- Repetition: `m` above 2000 is refused; `n` above 2000 means no maximum; `n < m` makes llama.cpp
  loop until memory runs out. Each repetition multiplies a count (1 for an item; for a group, the
  symbols created inside it, names first mentioned there included) that llama.cpp refuses above
  2000: `("a"?){1000}` passes, `("a"?){1001}` and `("a"{0,1000}){2}` not.
- Symbol ids count up in order of first mention. A hole below the highest id with a rule, or a
  reference past it, is an undefined rule; a name mentioned only under `{0}` vanishes unless a
  later rule takes a higher id. A `root` vanished so makes llama.cpp read past its rules.
- Left recursion: any cycle, over all rules, reachable from root or not, of references at the
  start of an alternative or after references to rules with a literally empty alternative
  (`x ::= | "a"`, `x ::= "" | "a"`, the rules `?`, `*` and `{m,n}` add; not `x ::= y` with y
  such). So `x*` and `x+` with such an x, `x**`, `x?*` and `("" | "a")*` are refused; `(x)*` and
  `x*?` are not.

Stricter on purpose, where llama.cpp accepts (GrammarError.limit names which):
- "size": more than MAX_GRAMMAR_BYTES of UTF-8.
- "nul": a NUL character; llama.cpp would read the grammar only up to it.
- "nesting": groups nested deeper than MAX_NESTING (this parser recurses); llama.cpp recurses too,
  and overflows an 8 MiB stack some 20,000 levels down.
- "token-text": `<text>` tokens, valid or not depending on the model's vocabulary.
- "token-id": `<[id]>` tokens: an id outside the vocabulary makes llama.cpp throw while sampling.
- "empty-class": a character class that matches no character (`[]`, `[z-a]`, `[^\\x00-\\U0010FFFF]`):
  llama-cpp-python aborts when generation reaches it.
- "expansion": repetitions that build more than MAX_EXPANDED_ELEMENTS elements (memory).
- "search": llama.cpp's left-recursion search walks every path anew (MAX_SEARCH_STEPS), and
  compares each first stack from root with all the others (MAX_ROOT_STACKS, MAX_STACK_WORK):
  beyond them it takes seconds to hours.
"""

import bisect
import re
from typing import NamedTuple, NoReturn

MAX_GRAMMAR_BYTES = 64 * 1024
MAX_NESTING = 64
MAX_EXPANDED_ELEMENTS = 1_000_000
MAX_SEARCH_STEPS = 50_000_000
MAX_ROOT_STACKS = 20_000
MAX_STACK_WORK = 2_000_000
REPETITION_THRESHOLD = 2000  # llama.cpp's MAX_REPETITION_THRESHOLD
UINT64_MAX = 2**64 - 1
UINT32_MAX = 2**32 - 1

SPACE = re.compile(r"(?:[ \t]|#[^\r\n]*)*")
SPACE_OR_NEWLINE = re.compile(r"(?:[ \t\r\n]|#[^\r\n]*)*")
NAME = re.compile(r"[A-Za-z0-9-]+")
DIGITS = re.compile(r"[0-9]+")
PLAIN_LITERAL = re.compile(r'[^"\\]+')
HEX = frozenset("0123456789abcdefABCDEF")
ESCAPE_DIGITS = {"x": 2, "u": 4, "U": 8}
MAX_CODE_POINT = 0x10FFFF
SIMPLE_ESCAPES = frozenset('trn\\"[]-')


class GrammarError(ValueError):
    """`limit` names the deliberate limit a grammar broke, None if llama.cpp refuses it too."""

    def __init__(self, message: str, limit: str | None = None):
        super().__init__(message)
        self.limit = limit


# A rule is a tuple of alternatives, an alternative a tuple of nodes, counted in llama.cpp's
# elements without building them: ("T", n) n terminal elements, ("R", id) a rule reference,
# ("S", nodes, times, size) nodes repeated `times` times.

def _size(node: tuple) -> int:
    return node[1] if node[0] == "T" else 1 if node[0] == "R" else node[3]


class _Chain(NamedTuple):
    """The rules a repetition S{m,n} adds, ids first..top: S'(1) ::= S |, S'(k) ::= S S'(k-1) |
    (bounded), or the one S' ::= S S' |. Only `top` is referenced from outside. Kept as one
    object: a 64 KiB grammar can ask for hundreds of thousands of them."""
    first: int
    top: int
    item: tuple  # the node S
    item_size: int
    bounded: bool

    def alternatives(self, rule_id: int) -> tuple:
        if not self.bounded:
            return (self.item, ("R", rule_id)), ()
        return ((self.item,) if rule_id == self.first else (self.item, ("R", rule_id - 1))), ()


class _Parser:
    def __init__(self, text: str):
        self.text = text
        self.names: dict[str, int] = {}
        self.owner: list[str] = []  # symbol id -> the rule whose text made it
        self.rules: dict[int, tuple] = {}  # named rules and groups
        self.sizes: dict[int, int] = {}  # their elements, one ALT or END per alternative included
        self.chains: dict[int, _Chain] = {}  # by top
        self.built = 0  # elements of every rule added, as llama.cpp allocates them

    def fail(self, reason: str, pos: int, limit: str | None = None):
        line = self.text.count("\n", 0, pos) + 1
        column = pos - (self.text.rfind("\n", 0, pos) + 1) + 1
        raise GrammarError(f"{reason} at line {line}, column {column}", limit)

    def space(self, pos: int, newlines: bool) -> int:
        return (SPACE_OR_NEWLINE if newlines else SPACE).match(self.text, pos).end()

    def symbol(self, name: str) -> int:
        if name not in self.names:
            self.names[name] = len(self.owner)
            self.owner.append(name)
        return self.names[name]

    def generate(self, rule_name: str) -> int:
        self.owner.append(rule_name)
        return len(self.owner) - 1

    def add_rule(self, rule_id: int, alternatives: tuple, pos: int) -> None:
        size = sum(sum(_size(node) for node in alternative) + 1 for alternative in alternatives)
        self.expand(size, pos)
        self.rules[rule_id], self.sizes[rule_id] = alternatives, size

    def expand(self, elements: int, pos: int) -> None:
        self.built += elements
        if self.built > MAX_EXPANDED_ELEMENTS:
            self.fail(f"grammar expands to more than {MAX_EXPANDED_ELEMENTS} elements", pos, "expansion")

    def char(self, pos: int) -> int:
        """One character of a literal or class, as parse_char reads it: the position after it."""
        text = self.text
        if text[pos] != "\\":
            return pos + 1
        kind = text[pos + 1:pos + 2]
        if kind in ESCAPE_DIGITS:
            digits = text[pos + 2:pos + 2 + ESCAPE_DIGITS[kind]]
            if len(digits) != ESCAPE_DIGITS[kind] or not HEX.issuperset(digits):
                self.fail(f"expecting {ESCAPE_DIGITS[kind]} hex digits after \\{kind}", pos)
            return pos + 2 + len(digits)
        if kind and kind in SIMPLE_ESCAPES:
            return pos + 2
        self.fail(f"unknown escape \\{kind}", pos)

    def code_point(self, pos: int) -> int:
        """The code point of the character (or escape) at pos; char() has checked its form."""
        text = self.text
        if text[pos] != "\\":
            return ord(text[pos])
        kind = text[pos + 1:pos + 2]
        if kind in ESCAPE_DIGITS:
            return int(text[pos + 2:pos + 2 + ESCAPE_DIGITS[kind]] or "0", 16)
        return ord({"t": "\t", "r": "\r", "n": "\n"}.get(kind, kind or "\\"))

    def number(self, pos: int) -> tuple[int, int]:
        match = DIGITS.match(self.text, pos)
        if not match:
            self.fail("expecting an integer", pos)
        digits = match.group().lstrip("0") or "0"
        # llama.cpp's stoull refuses what does not fit; int() refuses 4300 digits and more.
        if len(digits) > 20 or int(digits) > UINT64_MAX:
            self.fail("number too large", pos)
        return int(digits), match.end()

    def token(self, pos: int) -> int:
        text = self.text
        if text[pos:pos + 1] != "<":
            self.fail("expecting `<`", pos)
        if text[pos + 1:pos + 2] != "[":
            if text.find(">", pos) < 0:
                self.fail("expecting `>`", pos)
            self.fail("tokens written as text depend on the model's vocabulary; write `<[id]>`", pos,
                      "token-text")
        token_id, end = self.number(pos + 2)
        if token_id > UINT32_MAX:
            self.fail("token id too large", pos)
        if text[end:end + 2] != "]>":
            self.fail("expecting `]>`", end)
        # An id outside the model's vocabulary parses, then throws while sampling: llama-server
        # answers 500, llama-cpp-python dies.
        self.fail("token ids depend on the model's vocabulary; write the text instead", pos, "token-id")

    def sequence(self, pos: int, rule_name: str, alternative: list, nested: bool, depth: int) -> int:
        text, end = self.text, len(self.text)
        last_start = len(alternative)  # where the last item's nodes start; == len: no item
        repeated = 1  # llama.cpp's n_prev_rules
        while pos < end:
            char = text[pos]
            start = pos
            if char == '"':
                pos, count = pos + 1, 0
                while True:
                    plain = PLAIN_LITERAL.match(text, pos)
                    if plain:
                        count, pos = count + plain.end() - pos, plain.end()
                    if pos >= end:
                        self.fail("unterminated string literal", start)
                    if text[pos] == '"':
                        break
                    pos, count = self.char(pos), count + 1
                last_start, repeated = len(alternative), 1
                if count:
                    alternative.append(("T", count))
                pos = self.space(pos + 1, nested)
            elif char == "[":
                class_start = pos
                pos += 1
                negated = text[pos:pos + 1] == "^"
                if negated:
                    pos += 1
                count, ranges = 0, []
                while True:
                    if pos >= end:
                        self.fail("unterminated character class", start)
                    if text[pos] == "]":
                        break
                    first, pos, count = pos, self.char(pos), count + 1
                    low = high = self.code_point(first)
                    if text[pos:pos + 1] == "-" and text[pos + 1:pos + 2] != "]":
                        if pos + 1 >= end:
                            self.fail("unterminated character class", start)
                        last, pos, count = pos + 1, self.char(pos + 1), count + 1
                        high = self.code_point(last)
                    ranges.append((low, high))
                if _matches_nothing(ranges, negated):
                    # llama.cpp parses it; llama-cpp-python aborts when generation reaches it.
                    self.fail("character class that matches no character", class_start, "empty-class")
                last_start, repeated = len(alternative), 1
                if count:
                    alternative.append(("T", count))
                pos = self.space(pos + 1, nested)
            elif char in "<!":
                pos = self.token(pos + 1 if char == "!" else pos)
                last_start, repeated = len(alternative), 1
                alternative.append(("T", 1))
                pos = self.space(pos, nested)
            elif NAME.match(char):
                match = NAME.match(text, pos)
                rule_id = self.symbol(match.group())
                pos = self.space(match.end(), nested)
                last_start, repeated = len(alternative), 1
                alternative.append(("R", rule_id))
            elif char == "(":
                if depth >= MAX_NESTING:
                    self.fail(f"groups nested deeper than {MAX_NESTING}", pos, "nesting")
                pos = self.space(pos + 1, True)
                symbols_before = len(self.owner)
                group_id = self.generate(rule_name)
                pos = self.alternates(pos, rule_name, group_id, True, depth + 1)
                repeated = max(1, len(self.owner) - symbols_before)
                last_start = len(alternative)
                alternative.append(("R", group_id))
                if text[pos:pos + 1] != ")":
                    self.fail("missing `)`", pos)
                pos = self.space(pos + 1, nested)
            elif char == ".":
                last_start, repeated = len(alternative), 1
                alternative.append(("T", 1))
                pos = self.space(pos + 1, nested)
            elif char in "*+?":
                pos = self.space(pos + 1, nested)
                low, high = {"*": (0, None), "+": (1, None), "?": (0, 1)}[char]
                repeated = self.repeat(alternative, last_start, repeated, low, high, rule_name, start)
            elif char == "{":
                pos = self.space(pos + 1, nested)
                low, pos = self.number(pos)
                pos = self.space(pos, nested)
                if text[pos:pos + 1] == "}":
                    high = low
                elif text[pos:pos + 1] == ",":
                    pos = self.space(pos + 1, nested)
                    high = None
                    if DIGITS.match(text, pos):
                        high, pos = self.number(pos)
                        pos = self.space(pos, nested)
                    if text[pos:pos + 1] != "}":
                        self.fail("expecting `}`", pos)
                else:
                    self.fail("expecting `,` or `}`", pos)
                pos = self.space(pos + 1, nested)
                if low > REPETITION_THRESHOLD:
                    self.fail(f"repetition above {REPETITION_THRESHOLD}", start)
                if high is not None and (high > REPETITION_THRESHOLD or high == UINT64_MAX):
                    high = None  # llama.cpp drops a maximum above its threshold
                repeated = self.repeat(alternative, last_start, repeated, low, high, rule_name, start)
            else:
                break
        return pos

    def repeat(self, alternative: list, last_start: int, repeated: int, low: int, high: int | None,
               rule_name: str, pos: int) -> int:
        """llama.cpp's rewrite of the last item S: S{m,n} -> S (m times) S'(n-m), S'(x) ::= S S'(x-1) |"""
        if last_start == len(alternative):
            self.fail("expecting an item before the repetition", pos)
        total = high if high else low or 1
        if repeated * total > REPETITION_THRESHOLD:
            self.fail(f"repetition of {repeated} rules {total} times is above {REPETITION_THRESHOLD}", pos)
        if high is not None and high < low:
            self.fail("repetition {m,n} with n < m", pos)
        nodes = tuple(alternative[last_start:])
        item_size = sum(_size(node) for node in nodes)
        # One node for the item, shared by the chain's rules. Only a chain holds an ("S", ..., 1, ...)
        # node, so nodes nest only as deep as repetitions of 2 or more times can (2000 = 2^11).
        item = nodes[0] if len(nodes) == 1 else ("S", nodes, 1, item_size)
        del alternative[last_start:]
        if low == 1:
            alternative.extend(nodes)
        elif low:
            alternative.append(("S", nodes, low, low * item_size))
        count = 1 if high is None else high - low
        if not count:
            return repeated * total
        # Each rule: the item, a reference but in the first of a bounded chain, ALT, END.
        self.expand(count * (item_size + 3) - (high is not None), pos)
        first = len(self.owner)
        self.owner.extend([rule_name] * count)
        self.chains[first + count - 1] = _Chain(first, first + count - 1, item, item_size, high is not None)
        alternative.append(("R", first + count - 1))
        return repeated * total

    def alternates(self, pos: int, rule_name: str, rule_id: int, nested: bool, depth: int) -> int:
        alternatives = [[]]
        pos = self.sequence(pos, rule_name, alternatives[-1], nested, depth)
        while self.text[pos:pos + 1] == "|":
            pos = self.space(pos + 1, True)
            alternatives.append([])
            pos = self.sequence(pos, rule_name, alternatives[-1], nested, depth)
        self.add_rule(rule_id, tuple(tuple(alternative) for alternative in alternatives), pos)
        return pos

    def rule(self, pos: int) -> int:
        match = NAME.match(self.text, pos)
        if not match:
            self.fail("expecting a rule name", pos)
        pos = self.space(match.end(), False)
        rule_id = self.symbol(match.group())
        if not self.text.startswith("::=", pos):
            self.fail(f"expecting `::=` after rule name `{match.group()}`", pos)
        pos = self.alternates(self.space(pos + 3, True), match.group(), rule_id, False, 0)
        if self.text.startswith("\r\n", pos):
            pos += 2
        elif self.text[pos:pos + 1] in ("\r", "\n"):
            pos += 1
        elif pos < len(self.text):
            unexpected = self.text[pos]
            self.fail(f"unexpected `{unexpected}`" if unexpected.isprintable() else f"unexpected {unexpected!r}", pos)
        return self.space(pos, True)

    def grammar(self) -> None:
        pos = self.space(0, True)
        while pos < len(self.text):
            pos = self.rule(pos)
        self.check_defined()
        root = self.names.get("root")
        if root is None or root not in self.rules:
            raise GrammarError("no `root` rule")
        _LeftRecursion(self).check()
        _InitialStacks(self).check(root)

    def check_defined(self) -> None:
        """llama.cpp's rules are a vector up to the highest id with a rule: a hole in it, or a
        reference past its end, is an undefined rule. Groups and chains always have rules."""
        count = max(max(self.rules, default=-1), max(self.chains, default=-1)) + 1
        for name, rule_id in self.names.items():
            if rule_id < count and rule_id not in self.rules:
                raise GrammarError(f"rule `{name}` is used but not defined")
        seen = set()
        todo = [node for nodes in self.rules.values() for alternative in nodes for node in alternative]
        todo += [chain.item for chain in self.chains.values()]
        while todo:
            node = todo.pop()
            if node[0] == "R" and node[1] >= count:
                raise GrammarError(f"rule `{self.owner[node[1]]}` is used but not defined")
            if node[0] == "S" and id(node[1]) not in seen:
                seen.add(id(node[1]))
                todo.extend(node[1])


class _LeftRecursion:
    """llama_grammar_detect_left_recursion: a depth-first search, from every rule in id order, of
    the references at the start of alternatives, and of those after references to rules with a
    literally empty alternative. It remembers only which rules an earlier outer search reached."""

    def __init__(self, parser: _Parser):
        self.parser = parser
        self.may_be_empty = {rule_id: () in nodes for rule_id, nodes in parser.rules.items()}
        self.may_be_empty.update(dict.fromkeys(parser.chains, True))
        self.memo: dict[int, tuple[dict, bool]] = {}
        # A chain is one node here, its top: its rules lead down the chain and to what its item
        # leads to, so a cycle through any of them is a cycle through the top.
        self.edges: dict[int, dict[int, int]] = {}
        self.through: dict[int, bool] = {}  # chain top -> does the search go on past its item
        for rule_id, nodes in parser.rules.items():
            merged: dict[int, int] = {}
            for alternative in nodes:
                for target, times in self.leading(alternative)[0].items():
                    merged[target] = merged.get(target, 0) + times
            self.edges[rule_id] = merged
        for top, chain in parser.chains.items():
            references, self.through[top] = self.walk((chain.item,))
            if not chain.bounded and self.through[top]:
                references[top] = references.get(top, 0) + 1  # S' ::= S S' |
            self.edges[top] = references

    def leading(self, nodes: tuple) -> tuple[dict, bool]:
        """walk(), remembered by identity: for the tuples the rules hold, never temporary ones."""
        key = id(nodes)
        if key not in self.memo:
            self.memo[key] = self.walk(nodes)
        return self.memo[key]

    def walk(self, nodes: tuple) -> tuple[dict, bool]:
        """The references the search follows in nodes (id -> how many times), and whether it
        goes on past them."""
        references: dict[int, int] = {}
        through = True
        for node in nodes:
            if node[0] == "T":
                through = False
            elif node[0] == "R":
                references[node[1]] = references.get(node[1], 0) + 1
                through = self.may_be_empty[node[1]]
            else:
                inner, through = self.leading(node[1])
                for rule_id, times in inner.items():
                    references[rule_id] = references.get(rule_id, 0) + times * (node[2] if through else 1)
            if not through:
                break
        return references, through

    def check(self) -> None:
        if self.search_steps(self.without_cycles()) > MAX_SEARCH_STEPS:
            raise GrammarError(f"llama.cpp's left-recursion search would read more than {MAX_SEARCH_STEPS} "
                               "elements", "search")

    def without_cycles(self) -> list[int]:
        """Any cycle, reachable from root or not, is left recursion to llama.cpp. The nodes,
        each after the nodes it leads to."""
        edges, order = self.edges, []
        state = dict.fromkeys(edges, 0)  # 0 new, 1 on the path, 2 done
        for start in edges:
            if state[start]:
                continue
            state[start] = 1
            path = [(start, iter(edges[start]))]
            while path:
                node, targets = path[-1]
                target = next(targets, None)
                if target is None:
                    state[node] = 2
                    order.append(node)
                    path.pop()
                elif state[target] == 1:
                    raise GrammarError(f"left recursion through rule `{self.parser.owner[target]}`")
                elif state[target] == 0:
                    state[target] = 1
                    path.append((target, iter(edges[target])))
        return order

    def search_steps(self, order: list[int]) -> int:
        """Without a cycle the search still walks every path anew: the elements it reads, counts
        saturated just above the limit (exponential ones would grow thousands of digits)."""
        parser, edges, cap = self.parser, self.edges, MAX_SEARCH_STEPS + 1
        steps, base = {}, {}  # node -> elements read from it; chain top -> from one of its rules
        for node in order:
            below = sum(times * steps[target] for target, times in edges[node].items() if target != node)
            if node in parser.chains:
                # A rule of the chain: the item, a reference (but the first of a bounded chain),
                # ALT, END. From the top, the search reads all of them if it goes through the item.
                chain = parser.chains[node]
                count = node - chain.first + 1
                base[node] = min(cap, chain.item_size + 3 + below)
                if self.through[node]:
                    steps[node] = min(cap, count * base[node] - chain.bounded)
                else:
                    steps[node] = base[node] - (chain.bounded and count == 1)
            else:
                steps[node] = min(cap, parser.sizes[node] + below)
        starts = sorted([(rule_id, rule_id) for rule_id in parser.rules]
                        + [(chain.first, top) for top, chain in parser.chains.items()])
        total, searched = 0, set()
        for _, node in starts:
            chain = parser.chains.get(node)
            if chain is None:
                if node not in searched:
                    total += steps[node]
                    self.reach(node, searched)
            else:
                # The chain's rules, bottom first, each an outer search unless one reached it.
                count, first_less = node - chain.first + 1, int(chain.bounded)
                if node in searched:
                    if not self.through[node]:
                        total += (count - 1) * base[node] - first_less * (count > 1)
                elif self.through[node]:
                    total += base[node] * count * (count + 1) // 2 - first_less * count
                else:
                    total += count * base[node] - first_less
                self.reach(node, searched)
            if total >= cap:
                break
        return total

    def reach(self, start: int, searched: set) -> None:
        if start in searched:
            return
        searched.add(start)
        todo = [start]
        while todo:
            for target in self.edges[todo.pop()]:
                if target not in searched:
                    searched.add(target)
                    todo.append(target)


class _InitialStacks:
    """llama_grammar_advance_stack from each alternative of root, as llama_grammar_init_impl
    runs it: the distinct stacks of positions down to a terminal. Each new one is compared with
    all those found before, so their number squared is its time."""

    def __init__(self, parser: _Parser):
        self.parser = parser
        self.firsts = sorted(chain.first for chain in parser.chains.values())
        self.by_first = {chain.first: chain for chain in parser.chains.values()}
        self.flat: dict[tuple[int, int], tuple[list, int]] = {}
        self.flat_nodes: dict[int, tuple[list, bool]] = {}

    def alternatives(self, rule_id: int) -> tuple:
        if rule_id in self.parser.rules:
            return self.parser.rules[rule_id]
        first = self.firsts[bisect.bisect_right(self.firsts, rule_id) - 1]
        return self.by_first[first].alternatives(rule_id)

    def flatten(self, nodes: tuple) -> tuple[list, bool]:
        """The references before the first terminal, repetitions unrolled, and whether there is none."""
        references: list = []
        through = True
        for node in nodes:
            if node[0] == "T":
                through = False
            elif node[0] == "R":
                references.append(node[1])
            else:
                key = id(node[1])  # a tuple the rules hold: its identity stays its own
                if key not in self.flat_nodes:
                    self.flat_nodes[key] = self.flatten(node[1])
                inner, through = self.flat_nodes[key]
                references.extend(inner * (node[2] if through else 1))
            if not through:
                break
        return references, through

    def leading_references(self, rule_id: int, index: int) -> tuple[list, int]:
        """An alternative's references before its first terminal, and its size."""
        if (rule_id, index) not in self.flat:
            alternative = self.alternatives(rule_id)[index]
            self.flat[rule_id, index] = (self.flatten(alternative)[0], sum(_size(node) for node in alternative))
        return self.flat[rule_id, index]

    def check(self, root: int) -> None:
        self.count(root)

    def count(self, root: int) -> int:
        """How many stacks llama.cpp starts with; GrammarError beyond the limits."""
        finished, work = set(), 0  # work: the positions of every stack made, duplicates too
        for index, alternative in enumerate(self.alternatives(root)):
            todo, seen = [((root, index, 0),) if alternative else ()], set()
            while todo:
                stack = todo.pop()
                if stack in seen:
                    continue
                seen.add(stack)
                if not stack:
                    finished.add(stack)
                    continue
                rule_id, alt, position = stack[-1]
                references, size = self.leading_references(rule_id, alt)
                if position >= len(references):
                    finished.add(stack)  # at a terminal
                    if len(finished) > MAX_ROOT_STACKS:
                        self.refuse()
                    continue
                below = stack[:-1] + (((rule_id, alt, position + 1),) if position + 1 < size else ())
                target = references[position]
                for sub, nodes in enumerate(self.alternatives(target)):
                    todo.append(below + ((target, sub, 0),) if nodes else below)
                    work += len(below) + 1
                    if work > MAX_STACK_WORK:
                        self.refuse()
        return len(finished)

    @staticmethod
    def refuse() -> NoReturn:
        raise GrammarError(f"llama.cpp would start from more than {MAX_ROOT_STACKS} stacks, or make "
                           f"{MAX_STACK_WORK} positions in them", "search")


def _matches_nothing(ranges: list[tuple[int, int]], negated: bool) -> bool:
    """Whether a class of these (low, high) ranges matches no code point: llama.cpp matches a
    range whose high is below its low with nothing."""
    ranges = sorted((low, high) for low, high in ranges if low <= high)
    if not negated:
        return not ranges
    covered = -1  # the highest code point covered from 0 on
    for low, high in ranges:
        if low > covered + 1:
            return False
        covered = max(covered, high)
    return covered >= MAX_CODE_POINT


def check(grammar: str) -> None:
    """Raise GrammarError with the reason unless llama.cpp accepts `grammar` (or it breaks a
    deliberate limit)."""
    try:
        encoded = grammar.encode()
    except UnicodeEncodeError as error:
        raise GrammarError(f"grammar holds a lone UTF-16 surrogate at character {error.start}") from None
    if len(encoded) > MAX_GRAMMAR_BYTES:
        raise GrammarError(f"grammar longer than {MAX_GRAMMAR_BYTES} bytes", "size")
    if "\x00" in grammar:
        raise GrammarError("grammar contains a NUL character", "nul")
    if grammar == "":
        return  # llama.cpp's "no grammar": sampling is not constrained
    _Parser(grammar).grammar()
