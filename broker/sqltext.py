"""What the two languages users write in SQL syntax share (filters, `broker.domain.filters`;
ADQL, `broker.tap.adql`): reading the text into one sqlglot tree with bounded nesting, and
errors that say where, in the user's line and column."""

from __future__ import annotations

import sqlglot
from sqlglot import exp
from sqlglot.dialects.dialect import DialectType
from sqlglot.errors import ParseError, TokenError
from sqlglot.tokens import TokenType


class TextError(ValueError):
    """Text that is not valid: a plain message, and where (1-based line and column)."""

    def __init__(self, message: str, line: int | None = None, column: int | None = None) -> None:
        self.message = message
        self.line = line
        self.column = column
        where = f" (line {line}, column {column})" if line is not None else ""
        super().__init__(f"{message}{where}")


def position(text: str, start: int) -> tuple[int, int]:
    """The 1-based line and column of a character offset."""
    line = text.count("\n", 0, start) + 1
    return line, start - (text.rfind("\n", 0, start) + 1) + 1


def located(error: type[TextError], message: str, text: str,
            node: exp.Expr | None) -> TextError:
    """An error at the first character of a node (as far as the parser recorded it)."""
    starts = [n.meta["start"] for n in (node.walk() if node is not None else ())
              if isinstance(n, exp.Expr) and "start" in n.meta]
    if not starts:
        return error(message)
    return error(message, *position(text, min(starts)))


def parse_one(text: str, dialect: DialectType, error: type[TextError], *, what: str,
              max_depth: int, comments: bool) -> exp.Expr:
    """The one statement of ``text``: brackets nested at most ``max_depth`` deep, nothing
    after a ``;``, comments refused unless ``comments``; else ``error`` with where."""
    try:
        tokens = sqlglot.tokenize(text, read=dialect)
    except TokenError as exc:
        raise error(f"the {what} cannot be read: {first_line(exc)}") from None
    depth = 0
    previous = None
    for token in tokens:
        if token.token_type == TokenType.COMMA and previous in (TokenType.COMMA,
                                                                 TokenType.L_PAREN):
            raise error("syntax error: a value is missing before ','",
                        *position(text, token.start))
        previous = token.token_type
        if token.comments and not comments:
            raise error(f"comments are not allowed in a {what} (put notes in its "
                        "description)", *position(text, token.start))
        if token.token_type == TokenType.L_PAREN:
            depth += 1
            if depth > max_depth:
                raise error(f"brackets are nested more than {max_depth} deep",
                            *position(text, token.start))
        elif token.token_type == TokenType.R_PAREN:
            depth -= 1
        elif token.token_type == TokenType.SEMICOLON and token is not tokens[-1]:
            raise error(f"a {what} is one SELECT statement: nothing may follow ';'",
                        *position(text, token.start))
    try:
        statements = [s for s in sqlglot.parse(text, read=dialect) if s is not None]
    except ParseError as exc:
        found = exc.errors[0] if exc.errors else {}
        raise error(f"syntax error: {plain(str(found.get('description') or first_line(exc)))}",
                    found.get("line"), found.get("col")) from None
    except RecursionError:
        raise error(f"the {what} is nested too deeply (at most {max_depth} levels)") from None
    if len(statements) != 1:
        raise error(f"a {what} is one SELECT statement")
    return statements[0]


def first_line(exc: Exception) -> str:
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


def plain(description: str) -> str:
    """sqlglot's parser messages name its classes; a user reads the SQL words instead."""
    if "Required keyword" in description and "missing" in description:
        return "an operator or clause is missing its operand"
    if description.startswith("Invalid expression / Unexpected token"):
        return "unexpected word or symbol"
    return description.splitlines()[0] if description else description
