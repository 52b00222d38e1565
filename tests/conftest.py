"""Test-wide settings: never touch the network, never read or write a user's caches.

Set before anything imports `datasets`, which reads these variables once at import time.
"""

import os
import tempfile

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["TOKENIZERS_PARALLELISM"] = "false"
os.environ["HF_HOME"] = tempfile.mkdtemp(prefix="vdcnn_res_hf_")
