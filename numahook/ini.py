"""numahook.conf's usual shape, read without configparser.

Every managed hook call reads the config, and configparser (its import and the patterns
it compiles) was one of the larger costs of a managed ``prepare`` that are not
numahook's own work (bench/hook.py). The shipped file, and every file the tests write, uses only
section headers, ``key = value`` lines, comments and blank lines. :func:`simple_items`
reads exactly that subset, and gives what configparser would give for it. Anything else
(an indented line, which configparser may join to the value above; a duplicate; a key
outside a section; a line with no ``=`` or ``:``; ``[DEFAULT]``) returns None, and the
caller asks configparser, so that its rules and its messages stay the only ones.
"""

from __future__ import annotations

#: (section as written, key folded to lower case, value, line number)
Item = tuple[str, str, str, int]


def simple_items(text: str) -> list[Item] | None:
    """The settings of ``text`` in file order, or None when it is not of the simple shape.

    Lines are split at ``\\n`` only, as configparser reads them; a value is everything after
    the first ``=`` or ``:``, stripped, as configparser's option pattern takes it.
    """
    items: list[Item] = []
    section: str | None = None
    sections: set[str] = set()
    keys: set[tuple[str, str]] = set()
    for no, line in enumerate(text.split("\n"), 1):
        s = line.strip()
        if not s or s[0] in "#;":
            continue
        if line[0] != s[0]:
            return None  # indented: configparser may make it a continuation
        if s[0] == "[":
            if len(s) < 3 or s[-1] != "]" or s.count("]") != 1 or s.count("[") != 1:
                return None
            section = s[1:-1]
            folded = section.strip().lower()
            if folded in sections or folded == "default":
                return None
            sections.add(folded)
            continue
        if section is None:
            return None
        cut = min((i for i in (s.find("="), s.find(":")) if i >= 0), default=-1)
        key = s[:cut].rstrip().lower()
        if cut <= 0 or not key:
            return None
        if (section, key) in keys:
            return None
        keys.add((section, key))
        items.append((section, key, s[cut + 1:].strip(), no))
    return items
