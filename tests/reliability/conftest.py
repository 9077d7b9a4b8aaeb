"""Start the crash tests' forkserver as soon as collection selects one of them: it imports torch, FAISS,
LightGBM and compiles ranx's metrics (a minute on a loaded 2-core machine) while the tests before them run."""

from tests.reliability.crash_runner import start_forkserver


def pytest_collection_finish(session):
    if any(item.get_closest_marker("reliability") and "crash" in item.nodeid for item in session.items):
        start_forkserver()
