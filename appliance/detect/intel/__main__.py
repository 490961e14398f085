"""``python -m appliance.detect.intel compile|check [--cache-dir D] [--] FILE...``."""

import sys

from appliance.detect.intel.manager import main

sys.exit(main())
