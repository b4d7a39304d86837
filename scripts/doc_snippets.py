"""Write the ```python blocks of README.md and docs/*.md out as modules, for mypy.

A section's blocks form one module, in order (a later block may use an earlier one's names).
A fragment written as if inside a coroutine (a top-level `await`, `async for`, `async with`)
becomes the body of `async def` with `fabric: orbit_mq.Fabric` in scope.

    python scripts/doc_snippets.py OUTDIR
"""

from __future__ import annotations

import re
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BLOCK = re.compile(r"```python\n(.*?)```", re.DOTALL)
FRAGMENT_HEADER = "import orbit_mq\n\n\nasync def _fragment_{n}(fabric: orbit_mq.Fabric) -> None:\n"


def _as_module(block: str, n: int) -> str:
    try:
        compile(block, "<doc>", "exec", dont_inherit=True)
    except SyntaxError:  # a fragment of a coroutine's body
        return FRAGMENT_HEADER.format(n=n) + textwrap.indent(block, "    ")
    return block


def modules() -> dict[str, str]:
    """Module name → source, one per section of each document that has python blocks."""
    found: dict[str, str] = {}
    for doc in [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]:
        for index, section in enumerate(re.split(r"^## ", doc.read_text(), flags=re.MULTILINE)):
            blocks = BLOCK.findall(section)
            if blocks:
                parts = [_as_module(block, n) for n, block in enumerate(blocks)]
                found[f"{doc.stem.lower()}_{index}"] = "\n\n".join(parts)
    return found


def main(outdir: str) -> None:
    target = Path(outdir)
    target.mkdir(parents=True, exist_ok=True)
    for stale in target.glob("*.py"):
        stale.unlink()
    for name, source in modules().items():
        (target / f"{name}.py").write_text(source)


if __name__ == "__main__":
    main(sys.argv[1])
