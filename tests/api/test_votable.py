"""The VOTable writer of the IVOA answers must not corrupt the heap (astropy issue #20419)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

# Rows whose text crosses the C writer's 256-byte row buffer at every offset: astropy 8.0's
# C TABLEDATA writer then writes its terminator one byte past the buffer, which Python's debug
# allocator reports (and aborts on) when the buffer is freed.
_SCRIPT = textwrap.dedent("""
    import io
    from astropy.io.votable import parse_single_table
    from api.votable import Column, table
    columns = [Column("name", "char"), Column("v", "double")]
    for width in range(1, 300):
        rows = [{"name": "x" * width, "v": 1.5}, {"name": None, "v": None}]
        read = parse_single_table(io.BytesIO(table(columns, rows, name="t"))).to_table()
        assert read["name"][0] == "x" * width, width
        assert bool(read["v"].mask[1]), width
    print("written", width)
""")


def test_tables_of_every_row_width_leave_the_heap_whole() -> None:
    done = subprocess.run([sys.executable, "-c", _SCRIPT], capture_output=True, text=True,
                          env={**os.environ, "PYTHONMALLOC": "debug"}, timeout=300,
                          check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "written 299"
