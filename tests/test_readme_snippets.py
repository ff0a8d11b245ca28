"""The README's code runs as written."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def python_block_after(heading: str) -> str:
    """The first ```python block after ``heading`` in README.md."""
    text = (ROOT / "README.md").read_text()
    rest = text[text.index(heading):]
    return re.search(r"```python\n(.*?)```", rest, re.S).group(1)


@pytest.mark.slow  # a torchrun job of 4 ranks
def test_the_sharded_trainer_program_in_the_readme_trains_and_checkpoints_on_4_ranks(tmp_path):
    (tmp_path / "train.py").write_text(python_block_after("### Sharded trainers (FSDP2, HSDP)"))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "4",
                          "train.py"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    saved = tmp_path / "checkpoints" / "step-60"
    assert (saved / ".metadata").is_file() and len(list(saved.glob("*.distcp"))) == 4
