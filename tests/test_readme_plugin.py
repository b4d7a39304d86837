"""The README's "Writing a plugin" example runs as written."""

from __future__ import annotations

import re
import types
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def _section_code(title: str) -> str:
    text = README.read_text()
    section = text.split(f"## {title}\n", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    assert blocks, f"no python blocks under '## {title}'"
    return "\n".join(blocks)


async def test_the_readme_plugin_example_runs() -> None:
    module = types.ModuleType("readme_plugin_example")
    exec(compile(_section_code("Writing a plugin"), str(README), "exec"), module.__dict__)
    await module.test_greet()
