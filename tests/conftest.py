import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "files" / "engine"))
# Unit tests use Locust's statistics classes; gevent's monkey-patching would change threads and
# sockets for every other test of the session. Locust itself runs in subprocesses.
os.environ.setdefault("LOCUST_SKIP_MONKEY_PATCH", "1")
