"""pytest's ``-k`` expressions: tokenised, parsed into a matcher, evaluated without ``eval``.

Grammar (pytest's)::

    expression := expr? END
    expr       := and_expr ("or" and_expr)*
    and_expr   := not_expr ("and" not_expr)*
    not_expr   := "not" not_expr | "(" expr ")" | word

A word matches when it is a case-insensitive substring of the text (a case's id,
``scenario[store-workers-size]``).  A malformed expression raises ``ValueError`` saying where
and what was expected; nothing else can come out of parsing or matching.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["Matcher", "compile_keyword"]

#: A compiled expression: ``matcher(text)`` says whether ``text`` is selected.
Matcher = Callable[[str], bool]

_TOKEN = re.compile(r"\(|\)|[^\s()]+")
_OPERATORS = ("and", "or", "not")
_MAX_DEPTH = 100  # nested parentheses and nots: deeper is refused, not a RecursionError


@dataclass(frozen=True)
class _Token:
    text: str
    column: int  # 1-based, as pytest counts

    @property
    def kind(self) -> str:
        if self.text in ("(", ")") or self.text in _OPERATORS:
            return self.text
        return "word"

    def __str__(self) -> str:
        return {"(": "'('", ")": "')'"}.get(self.text, repr(self.text))


class _Parser:
    def __init__(self, expr: str) -> None:
        self.expr = expr
        self.tokens = [_Token(m.group(), m.start() + 1) for m in _TOKEN.finditer(expr)]
        self.at = 0
        self.depth = 0

    def fail(self, expected: str) -> ValueError:
        if self.at < len(self.tokens):
            token = self.tokens[self.at]
            where, got = token.column, str(token)
        else:
            where, got = len(self.expr) + 1, "the end of the expression"
        return ValueError(
            f"-k {self.expr!r} is not a valid expression: at column {where}, expected "
            f"{expected}; got {got} (words combine with and, or, not and parentheses)"
        )

    def peek(self) -> str | None:
        return self.tokens[self.at].kind if self.at < len(self.tokens) else None

    def take(self, kind: str) -> _Token | None:
        if self.peek() == kind:
            self.at += 1
            return self.tokens[self.at - 1]
        return None

    def expression(self) -> Matcher:
        if not self.tokens:
            return lambda text: True
        matcher = self.or_expr()
        if self.at < len(self.tokens):
            raise self.fail("'and', 'or' or the end of the expression")
        return matcher

    def or_expr(self) -> Matcher:
        parts = [self.and_expr()]
        while self.take("or"):
            parts.append(self.and_expr())
        return parts[0] if len(parts) == 1 else (lambda text: any(p(text) for p in parts))

    def and_expr(self) -> Matcher:
        parts = [self.not_expr()]
        while self.take("and"):
            parts.append(self.not_expr())
        return parts[0] if len(parts) == 1 else (lambda text: all(p(text) for p in parts))

    def not_expr(self) -> Matcher:
        self.depth += 1
        try:
            if self.depth > _MAX_DEPTH:
                raise self.fail(f"at most {_MAX_DEPTH} nested 'not's and parentheses")
            return self._not_expr()
        finally:
            self.depth -= 1

    def _not_expr(self) -> Matcher:
        if self.take("not"):
            inner = self.not_expr()
            return lambda text: not inner(text)
        if self.take("("):
            inner = self.or_expr()
            if not self.take(")"):
                raise self.fail("')'")
            return inner
        word = self.take("word")
        if word is None:
            raise self.fail("a word, 'not' or '('")
        needle = word.text.lower()
        return lambda text: needle in text.lower()


def compile_keyword(expr: str) -> Matcher:
    """Parse ``expr`` once; the matcher it returns never raises.

    Raises ``ValueError`` for a malformed expression, naming the column and what was expected.
    """
    return _Parser(expr).expression()
