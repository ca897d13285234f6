"""Object storage behind `inat_assets.storage`: fsspec filesystems, object locations and leases.

`inat_assets.storage.DataStore` is the seam every entry point goes through; when ``INAT_DATA_DIR`` is
a URL (``s3://bucket/prefix``, or any other fsspec protocol) its layout methods hand out `Location`
objects from here instead of local `pathlib.Path` objects:

- `location`: `Location` (one object or prefix on a store, with the small part of the pathlib
  API the engines use) and `open_filesystem` (the fsspec filesystem of a URL, credentials and
  endpoint from the standard AWS variables).
- `lease`: one writer per key across machines, by conditional PUT (``If-None-Match: *`` to take,
  ``If-Match: <etag>`` to renew or to take over an expired lease).
"""

from inat_assets.store.lease import Lease, lease
from inat_assets.store.location import Location, open_filesystem, split_url

__all__ = ["Lease", "Location", "lease", "open_filesystem", "split_url"]
