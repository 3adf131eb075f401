import os

# Deterministic CPU tests: a fixed thread count (set before torch loads) also keeps the
# load-following thread governor (losscli.threads) off, so two runs of a test never train
# at different counts. Subprocesses the tests start inherit it.
os.environ.setdefault("OMP_NUM_THREADS", str(min(2, os.cpu_count() or 1)))

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Keep tests away from the user's ~/.cache/losscli."""
    monkeypatch.setenv("LOSSCLI_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


@pytest.fixture(autouse=True)
def _registry_snapshot(monkeypatch):
    """Losses a test registers (plugins, replace=True) do not leak into other tests."""
    from losscli.losses import registry

    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    monkeypatch.setattr(registry, "_ALIASES", dict(registry._ALIASES))


@pytest.fixture(autouse=True)
def _job_registry_snapshot(monkeypatch):
    """Nor do jobs; a plugin file a test loads is forgotten too, so the next test that
    loads it registers its jobs again."""
    import sys

    import losscli.jobs as jobs

    monkeypatch.setattr(jobs, "_JOBS", dict(jobs._JOBS))
    monkeypatch.setattr(jobs, "_ALIASES", dict(jobs._ALIASES))
    before = {name for name in sys.modules if name.startswith("losscli_plugin_")}
    yield
    for name in [n for n in sys.modules if n.startswith("losscli_plugin_")]:
        if name not in before:
            del sys.modules[name]
