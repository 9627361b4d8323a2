"""`make test` runs most files in two pytest-xdist workers and the files in conftest.EXCLUSIVE alone afterwards: a file
that reads the clock must be in one list or the other, decided by someone, so that a new timing check does not end up
competing with another file for the cores."""

import re
from pathlib import Path

from .conftest import EXCLUSIVE

HERE = Path(__file__).parent
# Files that read the clock only for a wait's deadline or for a ratio of two runs in the same file: safe beside another.
CLOCK_ONLY_TO_WAIT = {"test_app_train.py", "test_experiment.py", "test_train.py", "test_schema_nulls.py"}
CLOCK = re.compile(r"\btime\.(monotonic|perf_counter|process_time|time)\(\)")


def test_every_exclusive_file_exists():
    assert EXCLUSIVE <= {p.name for p in HERE.glob("test_*.py")}, EXCLUSIVE - {p.name for p in HERE.glob("test_*.py")}


def test_a_file_that_reads_the_clock_is_exclusive_or_only_waits():
    readers = {p.name for p in HERE.glob("test_*.py") if CLOCK.search(p.read_text())}
    undecided = readers - EXCLUSIVE - CLOCK_ONLY_TO_WAIT
    assert not undecided, (f"{sorted(undecided)} read the clock: add them to tests/conftest.py EXCLUSIVE (they measure "
                           "time or load) or to CLOCK_ONLY_TO_WAIT here (a deadline for a wait only)")


class _Item:
    def __init__(self, name):
        self.path, self.markers = HERE / name, []

    def add_marker(self, marker):
        self.markers.append(marker.name)


def test_collection_marks_the_exclusive_files_and_no_other():
    from . import conftest

    items = [_Item(n) for n in ("test_sandbox.py", "test_engine_trl.py", "test_load.py")]
    conftest.pytest_collection_modifyitems(None, items)
    assert [i.markers for i in items] == [["exclusive"], [], ["exclusive"]]
