"""Test-wide settings: never touch the network, never read or write a user's caches.

Set before anything imports `datasets`, which reads these variables once at import time.
"""

import os
import tempfile

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["TOKENIZERS_PARALLELISM"] = "false"
os.environ["HF_HOME"] = tempfile.mkdtemp(prefix="vdcnn_res_hf_")

import pytest  # noqa: E402
import torch  # noqa: E402


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "shared(*paths): needs these paths in the shared folder beside the checkout (tests/fixtures/shared.py); "
        "skipped with a reason where absent, selected alone with -m shared",
    )


def pytest_runtest_setup(item: pytest.Item) -> None:
    """Skip a test marked `shared` in one line when the shared folder lacks a path it names."""
    from fixtures.shared import missing

    for marker in item.iter_markers("shared"):
        reason = missing(*marker.args)
        if reason:
            pytest.skip(reason)


@pytest.fixture
def shared_dir(request: pytest.FixtureRequest):
    """The shared folder (tests/fixtures/shared.py); only for tests marked `shared`, which skip without it."""
    from fixtures.shared import shared_dir as folder

    if request.node.get_closest_marker("shared") is None:
        pytest.fail(f"{request.node.nodeid} uses shared_dir: mark it @pytest.mark.shared(<paths>)", pytrace=False)
    return folder()


@pytest.fixture(scope="module")
def one_thread():
    """Tiny tensors: one thread is faster and immune to other processes on the 2 cores."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def ckpt(tmp_path_factory):
    """last.ckpt of a tiny 3-step run on the bundled sample (tests/fixtures/tiny.py), trained once."""
    from fixtures.tiny import tiny_checkpoint

    return tiny_checkpoint(tmp_path_factory)


@pytest.fixture
def in_repo(monkeypatch):
    """Run from the repository root: configs name data/ paths relative to it."""
    from fixtures.tiny import REPO

    monkeypatch.chdir(REPO)


class RunsCode:
    """Unpickling this object opens (creates) `marker`: the payload of a malicious file."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.fixture
def malicious(tmp_path, ckpt):
    """A real checkpoint with one extra entry whose unpickling would create `marker`."""
    checkpoint = torch.load(ckpt, weights_only=True)
    marker = tmp_path / "PWNED"
    checkpoint["payload"] = RunsCode(str(marker))
    path = tmp_path / "malicious.ckpt"
    torch.save(checkpoint, path)
    return path, marker


def run_cli(args, capsys) -> tuple[int, list[str]]:
    """Exit status (0 when main returns) and stderr lines of one in-process `vdcnn-res` call."""
    from vdcnn_res.cli import main

    try:
        main([str(a) for a in args])
        code = 0
    except SystemExit as exit_:
        code = exit_.code
    return code, capsys.readouterr().err.strip().splitlines()
