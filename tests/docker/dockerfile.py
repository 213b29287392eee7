"""A small Dockerfile parser: instructions (continuations joined, comments skipped)
grouped by FROM into stages."""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Instruction:
    keyword: str  # upper case: FROM, RUN, COPY, ...
    arguments: str  # the rest of the instruction, continuation lines joined
    line: int  # 1-based line of the instruction's first line

    @property
    def exec_form(self) -> list[str] | None:
        """The JSON array of an exec-form instruction (RUN, CMD, ENTRYPOINT...)."""
        text = self.arguments.strip()
        if not text.startswith("["):
            return None
        try:
            value = json.loads(text)
        except json.JSONDecodeError:
            return None
        return value if isinstance(value, list) and all(isinstance(v, str) for v in value) else None

    def flags_and_words(self) -> tuple[dict[str, str], list[str]]:
        """`--name=value` flags, then the remaining shell words (COPY, HEALTHCHECK...)."""
        flags: dict[str, str] = {}
        words = shlex.split(self.arguments)
        while words and words[0].startswith("--"):
            name, _, value = words.pop(0)[2:].partition("=")
            flags[name] = value
        return flags, words


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]

    def last(self, keyword: str) -> Instruction:
        found = self.all(keyword)
        assert found, f"stage {self.name or self.base} has no {keyword}"
        return found[-1]

    def index(self, instruction: Instruction) -> int:
        return self.instructions.index(instruction)


def parse_dockerfile(text: str) -> list[Stage]:
    """Split into instructions (comments, blank lines and parser directives skipped,
    backslash continuations joined), grouped by FROM into stages."""
    instructions: list[Instruction] = []
    pending: list[str] = []
    start = 0
    for number, raw in enumerate(text.splitlines(), 1):
        stripped = raw.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if pending and stripped.startswith("#"):
            continue  # a comment inside a continued instruction is dropped
        if not pending:
            start = number
        if stripped.endswith("\\"):
            pending.append(stripped[:-1].strip())
            continue
        pending.append(stripped)
        keyword, _, arguments = " ".join(p for p in pending if p).partition(" ")
        instructions.append(Instruction(keyword.upper(), arguments.strip(), start))
        pending = []
    assert not pending, "the Dockerfile ends inside a continued instruction"

    stages: list[Stage] = []
    for instruction in instructions:
        if instruction.keyword == "FROM":
            _, words = instruction.flags_and_words()
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
            stages.append(Stage(words[0], name))
        else:
            assert stages, f"line {instruction.line}: {instruction.keyword} before FROM"
            stages[-1].instructions.append(instruction)
    return stages
