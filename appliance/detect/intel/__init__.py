"""Threat intel: which addresses, names and fingerprints are known bad, and who said so.

- `store.py`: `IntelStore` and its lookups (the packet path), the records an alert cites;
- `builder.py`: tokens → compact sorted keys → a store (`build` from `Indicator` objects);
- `formats.py`: reading a file in bounded chunks, sniffing its format, the per-format parsers;
- `cache.py`: the compiled binary cache that makes restarts fast;
- `manager.py`: `load_files`, `IntelManager` (background reload, atomic swap, the old store kept
  when a new load fails) and ``python -m appliance.detect.intel compile|check``.
"""

from appliance.detect.intel.builder import MIN_PREFIX, Builder, build, classify
from appliance.detect.intel.cache import cache_path, read_cache, write_cache
from appliance.detect.intel.formats import (
    FEEDS,
    MAX_FILE_BYTES,
    MAX_LINE,
    MAX_PROBLEMS_PER_FILE,
)
from appliance.detect.intel.manager import (
    IntelManager,
    LoadResult,
    describe,
    intel_cache_dir,
    load_files,
    main,
)
from appliance.detect.intel.store import (
    FORMAT_VERSION,
    KINDS,
    FileReport,
    Indicator,
    IntelStore,
    LoadProblem,
    Meta,
    normalize_url,
)

__all__ = [
    "FEEDS",
    "FORMAT_VERSION",
    "KINDS",
    "MAX_FILE_BYTES",
    "MAX_LINE",
    "MAX_PROBLEMS_PER_FILE",
    "MIN_PREFIX",
    "Builder",
    "FileReport",
    "Indicator",
    "IntelManager",
    "IntelStore",
    "LoadProblem",
    "LoadResult",
    "Meta",
    "build",
    "cache_path",
    "classify",
    "describe",
    "intel_cache_dir",
    "load_files",
    "main",
    "normalize_url",
    "read_cache",
    "write_cache",
]
