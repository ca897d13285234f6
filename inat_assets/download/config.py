"""Settings for the download engine: what may be fetched, how fast, and how patiently."""

from __future__ import annotations

import math
import numbers
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from urllib.parse import urlsplit

import inat_assets
from inat_assets.errors import DownloadError
from inat_assets.photos import batch_key  # noqa: F401 -- re-exported: the rule lives in inat_assets.photos

STATIC_HOST = "static.inaturalist.org"
OPEN_DATA_HOST = "inaturalist-open-data.s3.amazonaws.com"
INAT_PHOTO_HOSTS: tuple[str, ...] = (OPEN_DATA_HOST, STATIC_HOST)
ALLOWED_HOSTS_ENV = "INAT_ALLOWED_HOSTS"

GB = 1_000_000_000
MB = 1_000_000

# Statuses of a manifest row.
OK = "ok"
CACHED = "cached"
FAILED_PERMANENT = "failed_permanent"
FAILED_TRANSIENT = "failed_transient"
STATUSES = (OK, CACHED, FAILED_PERMANENT, FAILED_TRANSIENT)

TRANSPORTS = ("aiohttp", "httpcore")


@dataclass(frozen=True)
class HostLimits:
    """Politeness limits for one host; ``None`` means unlimited.

    Who shares them is ``DownloadConfig.host_budget``: empty, they are per ``run_download`` call
    (``processes=N`` gives each child 1/N), and N runs at once against one host multiply the
    budget by N; a ledger URL (``host_budget.py``) makes them one budget for every run, process and
    machine that names it (the Dagster image batches get the instance's).
    """

    requests_per_second: float | None = None
    bytes_per_hour: int | None = None
    bytes_per_day: int | None = None

    @property
    def unlimited(self) -> bool:
        return self.requests_per_second is None and self.bytes_per_hour is None and self.bytes_per_day is None


UNLIMITED = HostLimits()

# iNaturalist: "Downloading over 5 GB of media per hour or 24 GB of media per day may result in a
# permanent block." Stay clearly below both (requests still in flight when a budget runs out can
# overshoot it by up to concurrency x image size). The open-data bucket has no iNaturalist limit;
# S3 throttles with 503 SlowDown, which the engine answers by pausing the host.
DEFAULT_HOST_LIMITS: Mapping[str, HostLimits] = MappingProxyType(
    {
        STATIC_HOST: HostLimits(requests_per_second=5.0, bytes_per_hour=4_500 * MB, bytes_per_day=22 * GB),
        OPEN_DATA_HOST: UNLIMITED,
    }
)

# The same photos/<id>/<size>.<ext> path is often on the other host when one answers 403/404.
DEFAULT_OTHER_HOSTS: Mapping[str, str] = MappingProxyType({STATIC_HOST: OPEN_DATA_HOST, OPEN_DATA_HOST: STATIC_HOST})


# Automatic worker processes (DownloadConfig.processes=None). One process downloads about 1,000
# photos/s (bench/download.py); four are more than a 1 Gbit/s link carries at 40 KB a photo, and
# each costs about 50 MB of memory. Starting one costs about 0.3 s of CPU, so a run known to have
# fewer than SMALL_RUN tasks stays in one process.
MAX_AUTO_PROCESSES = 4
SMALL_RUN = 1_000


def available_cores(cgroup_root: str = "/sys/fs/cgroup", proc_cgroup: str = "/proc/self/cgroup") -> int:
    """Cores this process may use: its CPU affinity, lowered to a cgroup CPU quota when one is set
    (a container given 1.5 CPUs on a 16-core host gets 2 here, not 16)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        cores = os.cpu_count() or 1
    quota = cgroup_cpu_quota(cgroup_root, proc_cgroup)
    if quota is not None:
        cores = min(cores, math.ceil(quota))
    return max(cores, 1)


def cgroup_cpu_quota(cgroup_root: str = "/sys/fs/cgroup", proc_cgroup: str = "/proc/self/cgroup") -> float | None:
    """The CPU quota (in cores) of this process's cgroup and its ancestors, the tightest one; None
    when there is none or it cannot be read. cgroup v2 (``cpu.max``) and v1 (``cpu.cfs_quota_us``)."""
    try:
        with open(proc_cgroup) as fh:
            lines = fh.read().splitlines()
    except OSError:
        return None
    quotas: list[float] = []
    for line in lines:
        hierarchy, _, rest = line.partition(":")
        controllers, _, path = rest.partition(":")
        if hierarchy == "0" and controllers == "":  # v2: one unified tree
            candidates = [(f"{cgroup_root}{d}/cpu.max", None) for d in _ancestors(path)]
        elif "cpu" in controllers.split(","):  # v1: the cpu controller's own tree
            base = next((f"{cgroup_root}/{c}" for c in (controllers, "cpu,cpuacct", "cpu")
                         if os.path.isdir(f"{cgroup_root}/{c}")), None)
            if base is None:
                continue
            candidates = [(f"{base}{d}/cpu.cfs_quota_us", f"{base}{d}/cpu.cfs_period_us") for d in _ancestors(path)]
        else:
            continue
        for first, period_file in candidates:
            try:
                with open(first) as fh:
                    text = fh.read().split()
                if period_file is None:  # "max 100000" or "150000 100000"
                    if text and text[0] != "max":
                        quotas.append(int(text[0]) / int(text[1]))
                else:
                    quota = int(text[0])
                    if quota > 0:
                        with open(period_file) as fh:
                            quotas.append(quota / int(fh.read().strip()))
            except (OSError, ValueError, IndexError, ZeroDivisionError):
                continue
    return min(quotas) if quotas else None


def _ancestors(path: str) -> list[str]:
    """``/a/b`` -> ``["/a/b", "/a", ""]``: a cgroup's folder and its parents' (the root is "")."""
    parts = [p for p in path.split("/") if p]
    return ["/" + "/".join(parts[:i]) if i else "" for i in range(len(parts), -1, -1)]


@dataclass(frozen=True)
class DownloadConfig:
    """Everything that shapes a download run. All durations are seconds."""

    # Requests in flight in total (split across processes). At most concurrency / latency photos
    # per second arrive: 256 keeps that bound above 1,000/s up to 250 ms (real hosts and object
    # stores are 20-200 ms away); per-host limits (static.inaturalist.org: 5 requests/s) still
    # hold, the extra requests wait in the host's gate.
    concurrency: int = 256
    # Worker processes; None: one per core this process may use (affinity, cgroup CPU quota), at
    # most MAX_AUTO_PROCESSES, and 1 for a run known to be small (see worker_processes). 1 runs
    # everything on one event loop; more spread HTTP parsing, hashing and file writes over cores
    # (processes.py); dest_dir must then be picklable (BatchFolders). Workers start with
    # multiprocessing's "spawn", which imports the caller's main script again: a script that
    # runs a download at its top level needs `if __name__ == "__main__":` (or processes=1).
    processes: int | None = None
    allowed_hosts: tuple[str, ...] = INAT_PHOTO_HOSTS
    host_limits: Mapping[str, HostLimits] = field(default_factory=lambda: DEFAULT_HOST_LIMITS)
    default_limits: HostLimits = UNLIMITED  # for allowed hosts missing from host_limits
    retries: int = 5  # extra attempts after a transient failure
    connect_timeout: float = 10.0
    read_timeout: float = 30.0  # longest silence while waiting for bytes
    request_deadline: float = 120.0  # whole request: connect, headers and body, per redirect hop
    max_bytes: int = 50 * MB
    # Bytes of response bodies held in memory at once; None: body_budget's rule below
    # (3 MB per request in flight, at most 192 MB). Worker processes get a share of the run's.
    body_budget: int | None = None
    try_other_host: bool = True
    other_hosts: Mapping[str, str] = field(default_factory=lambda: DEFAULT_OTHER_HOSTS)
    contact: str = ""
    backoff_base: float = 1.0
    backoff_max: float = 60.0
    retry_after_max: float = 300.0  # a longer Retry-After is shortened to this
    max_redirects: int = 5
    http2: bool = False  # S3 speaks HTTP/1.1 only; static.inaturalist.org is rate-limited anyway
    ca_file: str | None = None  # extra CA bundle to trust instead of certifi's (tests, TLS-inspecting proxies)
    # What carries httpx's requests: "aiohttp" (its C parser and one connection pool per process)
    # or "httpcore" (httpx's own stack, h11 in pure Python, a small pool per worker). HTTP/2
    # (``http2=True``) needs httpcore. Measured in bench/download.py (``ours-httpcore``).
    transport: str = "aiohttp"
    # With transport="httpcore": our asyncio network backend for httpcore instead of its anyio
    # one, about 40 % less CPU per request. False falls back to httpx's stock transport.
    fast_network_backend: bool = True
    # Where the per-host budgets are kept: "" = in memory, for this run alone; a ledger URL
    # (sqlite:////abs/file.db, postgresql://...) = shared with every run that names it. A string, so
    # the config stays picklable for worker processes. See inat_assets.download.host_budget.
    host_budget: str = ""

    def __post_init__(self) -> None:
        if self.concurrency < 1 or (self.processes is not None and self.processes < 1):
            raise ValueError("concurrency and processes must be at least 1")
        if self.retries < 0:
            raise ValueError("retries must be 0 or more")
        if self.transport not in TRANSPORTS:
            raise ValueError(f"transport must be one of {', '.join(TRANSPORTS)}, not {self.transport!r}")
        if not (self.contact.isascii() and self.contact.isprintable()):
            # It goes into the User-Agent field of every request, which HTTP keeps to printable ASCII.
            raise DownloadError(f"contact {self.contact!r} must be printable ASCII (an e-mail address or a URL, "
                                "with any non-ASCII part percent-encoded)")
        # Host names compare case-insensitively; normalise once here, and refuse a malformed entry
        # now rather than when (and in whichever worker process) the run starts.
        object.__setattr__(self, "allowed_hosts", tuple(h.strip().lower() for h in self.allowed_hosts if h.strip()))
        for entry in self.allowed_hosts:
            parse_allowed_host(entry)

    @property
    def user_agent(self) -> str:
        # iNaturalist asks for a User-Agent that names the application; the contact (an e-mail or
        # URL) lets them reach the operator instead of blocking the IP.
        agent = f"inat-assets/{inat_assets.__version__}"
        return f"{agent} (+{self.contact.strip()})" if self.contact.strip() else agent

    def worker_processes(self, total: int | None) -> int:
        """How many processes a run of ``total`` tasks (None: unknown) uses: ``processes`` when set."""
        if self.processes is not None:
            return self.processes
        if total is not None and total < SMALL_RUN:
            return 1
        return max(1, min(available_cores(), MAX_AUTO_PROCESSES, self.concurrency))

    @property
    def uses_aiohttp(self) -> bool:
        return self.transport == "aiohttp" and not self.http2

    def limits_for(self, host: str) -> HostLimits:
        return self.host_limits.get(host, self.default_limits)


@dataclass(frozen=True)
class PhotoTask:
    """One photo to fetch. The file name comes from ``photo_id`` only, never from the URL."""

    photo_id: int
    url: str


# Photo ids are stored as int64 in the manifest; iNaturalist's are positive and far below this.
MAX_PHOTO_ID = 2**63 - 1


def parse_photo_id(value: object) -> int | None:
    """``value`` as a photo id, or None when it cannot be one.

    Accepted: an integer in 0 .. 2**63-1, a float without a fraction (a column with gaps read by
    pandas is float), a string of decimal digits. Refused: null, NaN, infinities, fractions,
    negative numbers, ids beyond int64, booleans, any other text.
    """
    if type(value) is int:  # the common case first: an int64 column
        number = value
    elif value is None or isinstance(value, bool):
        return None
    elif isinstance(value, numbers.Integral):  # NumPy integers and the like
        number = int(value)
    elif isinstance(value, numbers.Real):  # floats, NumPy floats
        real = float(value)
        if not math.isfinite(real) or not real.is_integer():
            return None
        number = int(real)
    elif isinstance(value, str):
        text = value.strip()
        if not (text.isascii() and text.isdigit()):
            return None
        number = int(text)
    else:
        return None
    return number if 0 <= number <= MAX_PHOTO_ID else None
ANY_PORT = -1


def parse_allowed_host(entry: str) -> tuple[str, int | None]:
    """``(host, port)`` of an allowlist entry: ``host`` -> port None (the scheme's default port),
    ``host:port``, ``host:*`` -> ANY_PORT. IPv6 addresses in brackets: ``[::1]:8080``."""
    if entry.endswith(":*"):
        host, port = entry[:-2].strip("[]"), ANY_PORT
    else:
        try:
            parts = urlsplit(f"//{entry}")
            host, port = parts.hostname or "", parts.port
            if parts.path or parts.query or parts.fragment or parts.username or parts.password:
                host = ""
        except ValueError:
            host = ""
    if not host:
        raise DownloadError(
            f"allowed host {entry!r} is not a host name, host:port or host:*; fix --allow-host or INAT_ALLOWED_HOSTS"
        )
    return host.lower(), port


def allowed_hosts_from_env(default: tuple[str, ...] = INAT_PHOTO_HOSTS) -> tuple[str, ...]:
    """Hosts from ``INAT_ALLOWED_HOSTS`` (comma-separated), or ``default`` when it is unset or empty.

    An entry is ``host`` (ports 80/443 only), ``host:port`` or ``host:*`` (any port); see
    photo_fetcher.HostAllowlist.
    """
    raw = os.environ.get(ALLOWED_HOSTS_ENV, "")
    hosts = tuple(h.strip().lower() for h in raw.split(",") if h.strip())
    return hosts or default


# The run's BodyBudget: 3 MB per request in flight (a large original is about 2 MB), at most
# 192 MB, never less than one body of max_bytes. From 64 requests up that is 192 MB, which with the
# interpreter and libraries (about 130 MB) and socket buffers (network.py) keeps a run under
# 500 MB whatever the servers send. Each worker process gets 1/N of it (``DownloadConfig.body_budget``),
# but at least one body of max_bytes.
_BUDGET_PER_REQUEST = 3 * MB
_BUDGET_MAX = 192 * MB


def body_budget(config: DownloadConfig) -> int:
    """Bytes of response bodies one event loop may hold (network.BodyBudget): ``config.body_budget``
    (a worker process's share), else the rule above."""
    if config.body_budget is not None:
        return config.body_budget
    return max(config.max_bytes, min(_BUDGET_MAX, config.concurrency * _BUDGET_PER_REQUEST))
