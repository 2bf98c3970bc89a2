"""On PYTHONPATH, makes ``import torch`` fail: scripts/run_tests.sh runs tests/service this way, so that
the service and its tests stay free of torch (the Docker images have none)."""

import sys

sys.modules["torch"] = None
