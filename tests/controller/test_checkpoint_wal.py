"""A checkpoint is one large transaction: the state file's write-ahead log is cut back
right after it, not left at the size of the largest checkpoint."""

from __future__ import annotations

from pathlib import Path

from controller.release_store import ControllerState


def test_the_log_is_cut_back_after_a_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    state = ControllerState(path)
    try:
        document = {"traces": [[f"trace-{i:08d}", "canary", float(i)] for i in range(120_000)]}
        state.save_checkpoint("support", started_at=0.0, at=600.0, document=document, keep_from=0.0)
        wal = Path(f"{path}-wal")
        size = wal.stat().st_size if wal.exists() else 0
        assert size < 64 * 1024, f"write-ahead log of {size} bytes after a checkpoint"
        found = state.checkpoint("support")
        assert found is not None and found.document == document
    finally:
        state.close()
