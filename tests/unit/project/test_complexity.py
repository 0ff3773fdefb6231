"""No function in qfleet is harder to follow than cyclomatic complexity 15 (radon's measure).

Past that, a function mixes decisions that deserve names of their own: split it (a phase
function and one function per condition, a success path and a failure path) rather than raise
the limit.
"""

from __future__ import annotations

from radon.complexity import cc_visit

from tests.support.paths import PACKAGE

LIMIT = 15


def test_no_function_is_above_the_complexity_limit() -> None:
    too_complex = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for block in cc_visit(path.read_text()):
            if block.complexity > LIMIT:
                too_complex.append(
                    f"{path.relative_to(PACKAGE)}:{block.lineno} {block.fullname} ({block.complexity})"
                )
    assert not too_complex, f"above cyclomatic complexity {LIMIT}:\n" + "\n".join(too_complex)
